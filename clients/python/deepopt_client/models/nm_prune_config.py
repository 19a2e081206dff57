from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.nm_prune_config_hessian import NMPruneConfigHessian
from ..models.nm_prune_config_selection import NMPruneConfigSelection
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.fine_tune_settings import FineTuneSettings


T = TypeVar("T", bound="NMPruneConfig")


@_attrs_define
class NMPruneConfig:
    """N:M semi-structured sparsity: at most `n` nonzeros in every group of `m` consecutive weights along the input
    dimension (2:4 is what NVIDIA Ampere sparse tensor cores run), verified on every pruned weight. Kept weights
    chosen by magnitude (ONNX and PyTorch) or by OBS saliency with the OBS update (`selection: obs`, PyTorch).
    Mishra et al., 2021, https://arxiv.org/abs/2104.08378

        Attributes:
            type_ (Literal['prune']): The pass: `prune`; `method` selects the variant. Default: 'prune'.
            version (int | Unset): Schema version of the config, recorded with a stored spec so that a later release can
                still read it (1: the only version so far). Default: 1.
            targets (list[str] | None | Unset): Layer names or globs to prune (module names such as `fc1`,
                `encoder.layer.*.output.dense`, or ONNX node/initializer names); default: every Linear/Conv (MatMul/Gemm/Conv)
                layer.
            exclude (list[str] | Unset): Layer names or globs to leave dense (besides embeddings, and the classifier head
                unless targeted).
            keep_head (bool | Unset): Leave the classifier head dense (layers named like `classifier`, `lm_head`, `head`,
                poolers, else the last Linear) unless `targets` names it. Default: True.
            fine_tune (FineTuneSettings | None | Unset): Recover after pruning (and after every step of a `schedule`) on the
                job's `train_dataset_id`, with the pruned weights held at zero; None: no recovery.
            method (Literal['nm'] | Unset): N:M semi-structured sparsity. Default: 'nm'.
            n (int | Unset): Nonzeros kept per group. Default: 2.
            m (int | Unset): Group size along the input dimension. Default: 4.
            selection (NMPruneConfigSelection | Unset): How the kept weights are chosen. Default:
                NMPruneConfigSelection.MAGNITUDE.
            hessian (NMPruneConfigHessian | Unset): OBS selection: block-diagonal empirical Fisher (`fisher`) or each
                layer's input Hessian (`inputs`, SparseGPT; the Fisher settings are then unused). Default:
                NMPruneConfigHessian.FISHER.
            block_size (int | Unset): OBS selection: Fisher block (rounded to a multiple of m). Default: 32.
            num_gradients (int | Unset): OBS selection: per-sample gradients. Default: 128.
            dampening (float | Unset): OBS selection: relative Fisher dampening. Default: 0.01.
    """

    type_: Literal["prune"] = "prune"
    version: int | Unset = 1
    targets: list[str] | None | Unset = UNSET
    exclude: list[str] | Unset = UNSET
    keep_head: bool | Unset = True
    fine_tune: FineTuneSettings | None | Unset = UNSET
    method: Literal["nm"] | Unset = "nm"
    n: int | Unset = 2
    m: int | Unset = 4
    selection: NMPruneConfigSelection | Unset = NMPruneConfigSelection.MAGNITUDE
    hessian: NMPruneConfigHessian | Unset = NMPruneConfigHessian.FISHER
    block_size: int | Unset = 32
    num_gradients: int | Unset = 128
    dampening: float | Unset = 0.01

    def to_dict(self) -> dict[str, Any]:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415

        type_ = self.type_

        version = self.version

        targets: list[str] | None | Unset
        if isinstance(self.targets, Unset):
            targets = UNSET
        elif isinstance(self.targets, list):
            targets = self.targets

        else:
            targets = self.targets

        exclude: list[str] | Unset = UNSET
        if not isinstance(self.exclude, Unset):
            exclude = self.exclude

        keep_head = self.keep_head

        fine_tune: dict[str, Any] | None | Unset
        if isinstance(self.fine_tune, Unset):
            fine_tune = UNSET
        elif isinstance(self.fine_tune, FineTuneSettings):
            fine_tune = self.fine_tune.to_dict()
        else:
            fine_tune = self.fine_tune

        method = self.method

        n = self.n

        m = self.m

        selection: str | Unset = UNSET
        if not isinstance(self.selection, Unset):
            selection = self.selection.value

        hessian: str | Unset = UNSET
        if not isinstance(self.hessian, Unset):
            hessian = self.hessian.value

        block_size = self.block_size

        num_gradients = self.num_gradients

        dampening = self.dampening

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "type": type_,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if targets is not UNSET:
            field_dict["targets"] = targets
        if exclude is not UNSET:
            field_dict["exclude"] = exclude
        if keep_head is not UNSET:
            field_dict["keep_head"] = keep_head
        if fine_tune is not UNSET:
            field_dict["fine_tune"] = fine_tune
        if method is not UNSET:
            field_dict["method"] = method
        if n is not UNSET:
            field_dict["n"] = n
        if m is not UNSET:
            field_dict["m"] = m
        if selection is not UNSET:
            field_dict["selection"] = selection
        if hessian is not UNSET:
            field_dict["hessian"] = hessian
        if block_size is not UNSET:
            field_dict["block_size"] = block_size
        if num_gradients is not UNSET:
            field_dict["num_gradients"] = num_gradients
        if dampening is not UNSET:
            field_dict["dampening"] = dampening

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.fine_tune_settings import FineTuneSettings  # noqa: PLC0415

        d = dict(src_dict)
        type_ = cast(Literal["prune"], d.pop("type"))
        if type_ != "prune":
            raise ValueError(f"type must match const 'prune', got '{type_}'")

        version = d.pop("version", UNSET)

        def _parse_targets(data: object) -> list[str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                targets_type_0 = cast(list[str], data)

                return targets_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[str] | None | Unset, data)

        targets = _parse_targets(d.pop("targets", UNSET))

        exclude = cast(list[str], d.pop("exclude", UNSET))

        keep_head = d.pop("keep_head", UNSET)

        def _parse_fine_tune(data: object) -> FineTuneSettings | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                fine_tune_type_0 = FineTuneSettings.from_dict(data)

                return fine_tune_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(FineTuneSettings | None | Unset, data)

        fine_tune = _parse_fine_tune(d.pop("fine_tune", UNSET))

        method = cast(Literal["nm"] | Unset, d.pop("method", UNSET))
        if method != "nm" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'nm', got '{method}'")

        n = d.pop("n", UNSET)

        m = d.pop("m", UNSET)

        _selection = d.pop("selection", UNSET)
        selection: NMPruneConfigSelection | Unset
        if isinstance(_selection, Unset):
            selection = UNSET
        else:
            selection = NMPruneConfigSelection(_selection)

        _hessian = d.pop("hessian", UNSET)
        hessian: NMPruneConfigHessian | Unset
        if isinstance(_hessian, Unset):
            hessian = UNSET
        else:
            hessian = NMPruneConfigHessian(_hessian)

        block_size = d.pop("block_size", UNSET)

        num_gradients = d.pop("num_gradients", UNSET)

        dampening = d.pop("dampening", UNSET)

        nm_prune_config = cls(
            type_=type_,
            version=version,
            targets=targets,
            exclude=exclude,
            keep_head=keep_head,
            fine_tune=fine_tune,
            method=method,
            n=n,
            m=m,
            selection=selection,
            hessian=hessian,
            block_size=block_size,
            num_gradients=num_gradients,
            dampening=dampening,
        )

        return nm_prune_config
