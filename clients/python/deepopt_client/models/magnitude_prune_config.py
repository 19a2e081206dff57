from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, cast

from attrs import define as _attrs_define

from ..models.magnitude_prune_config_scope import MagnitudePruneConfigScope
from ..types import UNSET, Unset

T = TypeVar("T", bound="MagnitudePruneConfig")


@_attrs_define
class MagnitudePruneConfig:
    """Unstructured magnitude pruning of the weights of Linear/Conv (PyTorch) or MatMul/Gemm/Conv (ONNX).

    `scope="global"` ranks all prunable weights together; `"layer"` prunes each layer to the same sparsity.
    Paper: Han et al., 2015, https://arxiv.org/abs/1506.02626

        Attributes:
            sparsity (float): Fraction of prunable weights set to zero.
            version (int | Unset):  Default: 1.
            type_ (Literal['prune'] | Unset):  Default: 'prune'.
            method (Literal['magnitude'] | Unset):  Default: 'magnitude'.
            scope (MagnitudePruneConfigScope | Unset):  Default: MagnitudePruneConfigScope.GLOBAL.
            exclude (list[str] | Unset): Layer names to leave dense.
    """

    sparsity: float
    version: int | Unset = 1
    type_: Literal["prune"] | Unset = "prune"
    method: Literal["magnitude"] | Unset = "magnitude"
    scope: MagnitudePruneConfigScope | Unset = MagnitudePruneConfigScope.GLOBAL
    exclude: list[str] | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        sparsity = self.sparsity

        version = self.version

        type_ = self.type_

        method = self.method

        scope: str | Unset = UNSET
        if not isinstance(self.scope, Unset):
            scope = self.scope.value

        exclude: list[str] | Unset = UNSET
        if not isinstance(self.exclude, Unset):
            exclude = self.exclude

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "sparsity": sparsity,
            }
        )
        if version is not UNSET:
            field_dict["version"] = version
        if type_ is not UNSET:
            field_dict["type"] = type_
        if method is not UNSET:
            field_dict["method"] = method
        if scope is not UNSET:
            field_dict["scope"] = scope
        if exclude is not UNSET:
            field_dict["exclude"] = exclude

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        sparsity = d.pop("sparsity")

        version = d.pop("version", UNSET)

        type_ = cast(Literal["prune"] | Unset, d.pop("type", UNSET))
        if type_ != "prune" and not isinstance(type_, Unset):
            raise ValueError(f"type must match const 'prune', got '{type_}'")

        method = cast(Literal["magnitude"] | Unset, d.pop("method", UNSET))
        if method != "magnitude" and not isinstance(method, Unset):
            raise ValueError(f"method must match const 'magnitude', got '{method}'")

        _scope = d.pop("scope", UNSET)
        scope: MagnitudePruneConfigScope | Unset
        if isinstance(_scope, Unset):
            scope = UNSET
        else:
            scope = MagnitudePruneConfigScope(_scope)

        exclude = cast(list[str], d.pop("exclude", UNSET))

        magnitude_prune_config = cls(
            sparsity=sparsity,
            version=version,
            type_=type_,
            method=method,
            scope=scope,
            exclude=exclude,
        )

        return magnitude_prune_config
