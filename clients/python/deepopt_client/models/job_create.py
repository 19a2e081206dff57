from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.job_create_device import JobCreateDevice
from ..models.job_create_outputs_type_0_item import JobCreateOutputsType0Item
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.auto_config import AutoConfig
    from ..models.benchmark_settings import BenchmarkSettings
    from ..models.bf_16_quantize_config import Bf16QuantizeConfig
    from ..models.distill_config import DistillConfig
    from ..models.dynamic_quantize_config import DynamicQuantizeConfig
    from ..models.export_config import ExportConfig
    from ..models.fp_16_quantize_config import Fp16QuantizeConfig
    from ..models.full_finetune_config import FullFinetuneConfig
    from ..models.lora_finetune_config import LoraFinetuneConfig
    from ..models.magnitude_prune_config import MagnitudePruneConfig
    from ..models.nm_prune_config import NMPruneConfig
    from ..models.obs_prune_config import ObsPruneConfig
    from ..models.parallel_adapter_finetune_config import ParallelAdapterFinetuneConfig
    from ..models.prefix_finetune_config import PrefixFinetuneConfig
    from ..models.series_adapter_finetune_config import SeriesAdapterFinetuneConfig
    from ..models.static_quantize_config import StaticQuantizeConfig
    from ..models.structured_prune_config import StructuredPruneConfig
    from ..models.weight_only_quantize_config import WeightOnlyQuantizeConfig


T = TypeVar("T", bound="JobCreate")


@_attrs_define
class JobCreate:
    """A pipeline of passes over an uploaded model.

    Attributes:
        model_id (str):
        passes (list[AutoConfig | Bf16QuantizeConfig | DistillConfig | DynamicQuantizeConfig | ExportConfig |
            Fp16QuantizeConfig | FullFinetuneConfig | LoraFinetuneConfig | MagnitudePruneConfig | NMPruneConfig |
            ObsPruneConfig | ParallelAdapterFinetuneConfig | PrefixFinetuneConfig | SeriesAdapterFinetuneConfig |
            StaticQuantizeConfig | StructuredPruneConfig | WeightOnlyQuantizeConfig]):
        calibration_dataset_id (None | str | Unset):
        eval_dataset_id (None | str | Unset):
        train_dataset_id (None | str | Unset):
        outputs (list[JobCreateOutputsType0Item] | None | Unset): Formats to produce; default: ONNX for ONNX models,
            else the upload's format.
        device (JobCreateDevice | Unset):  Default: JobCreateDevice.CPU.
        benchmark (BenchmarkSettings | Unset): How the original and every output are timed; the same settings for all,
            in the same process.
        callback_url (None | str | Unset): http(s) URL that gets a signed POST (`X-DeepOpt-Signature: sha256=HMAC-
            SHA256(body)` with the tenant's webhook secret) when the job ends; retried with backoff. Loopback and private
            addresses are refused unless the operator allows them.
    """

    model_id: str
    passes: list[
        AutoConfig
        | Bf16QuantizeConfig
        | DistillConfig
        | DynamicQuantizeConfig
        | ExportConfig
        | Fp16QuantizeConfig
        | FullFinetuneConfig
        | LoraFinetuneConfig
        | MagnitudePruneConfig
        | NMPruneConfig
        | ObsPruneConfig
        | ParallelAdapterFinetuneConfig
        | PrefixFinetuneConfig
        | SeriesAdapterFinetuneConfig
        | StaticQuantizeConfig
        | StructuredPruneConfig
        | WeightOnlyQuantizeConfig
    ]
    calibration_dataset_id: None | str | Unset = UNSET
    eval_dataset_id: None | str | Unset = UNSET
    train_dataset_id: None | str | Unset = UNSET
    outputs: list[JobCreateOutputsType0Item] | None | Unset = UNSET
    device: JobCreateDevice | Unset = JobCreateDevice.CPU
    benchmark: BenchmarkSettings | Unset = UNSET
    callback_url: None | str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        from ..models.bf_16_quantize_config import Bf16QuantizeConfig  # noqa: PLC0415
        from ..models.distill_config import DistillConfig  # noqa: PLC0415
        from ..models.dynamic_quantize_config import DynamicQuantizeConfig  # noqa: PLC0415
        from ..models.export_config import ExportConfig  # noqa: PLC0415
        from ..models.fp_16_quantize_config import Fp16QuantizeConfig  # noqa: PLC0415
        from ..models.full_finetune_config import FullFinetuneConfig  # noqa: PLC0415
        from ..models.lora_finetune_config import LoraFinetuneConfig  # noqa: PLC0415
        from ..models.magnitude_prune_config import MagnitudePruneConfig  # noqa: PLC0415
        from ..models.nm_prune_config import NMPruneConfig  # noqa: PLC0415
        from ..models.obs_prune_config import ObsPruneConfig  # noqa: PLC0415
        from ..models.parallel_adapter_finetune_config import ParallelAdapterFinetuneConfig  # noqa: PLC0415
        from ..models.prefix_finetune_config import PrefixFinetuneConfig  # noqa: PLC0415
        from ..models.series_adapter_finetune_config import SeriesAdapterFinetuneConfig  # noqa: PLC0415
        from ..models.static_quantize_config import StaticQuantizeConfig  # noqa: PLC0415
        from ..models.structured_prune_config import StructuredPruneConfig  # noqa: PLC0415
        from ..models.weight_only_quantize_config import WeightOnlyQuantizeConfig  # noqa: PLC0415

        model_id = self.model_id

        passes = []
        for passes_item_data in self.passes:
            passes_item: dict[str, Any]
            if isinstance(passes_item_data, DynamicQuantizeConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, StaticQuantizeConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, WeightOnlyQuantizeConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, Fp16QuantizeConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, Bf16QuantizeConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, MagnitudePruneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, ObsPruneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, NMPruneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, StructuredPruneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, ExportConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, DistillConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, LoraFinetuneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, SeriesAdapterFinetuneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, ParallelAdapterFinetuneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, PrefixFinetuneConfig):
                passes_item = passes_item_data.to_dict()
            elif isinstance(passes_item_data, FullFinetuneConfig):
                passes_item = passes_item_data.to_dict()
            else:
                passes_item = passes_item_data.to_dict()

            passes.append(passes_item)

        calibration_dataset_id: None | str | Unset
        if isinstance(self.calibration_dataset_id, Unset):
            calibration_dataset_id = UNSET
        else:
            calibration_dataset_id = self.calibration_dataset_id

        eval_dataset_id: None | str | Unset
        if isinstance(self.eval_dataset_id, Unset):
            eval_dataset_id = UNSET
        else:
            eval_dataset_id = self.eval_dataset_id

        train_dataset_id: None | str | Unset
        if isinstance(self.train_dataset_id, Unset):
            train_dataset_id = UNSET
        else:
            train_dataset_id = self.train_dataset_id

        outputs: list[str] | None | Unset
        if isinstance(self.outputs, Unset):
            outputs = UNSET
        elif isinstance(self.outputs, list):
            outputs = []
            for outputs_type_0_item_data in self.outputs:
                outputs_type_0_item = outputs_type_0_item_data.value
                outputs.append(outputs_type_0_item)

        else:
            outputs = self.outputs

        device: str | Unset = UNSET
        if not isinstance(self.device, Unset):
            device = self.device.value

        benchmark: dict[str, Any] | Unset = UNSET
        if not isinstance(self.benchmark, Unset):
            benchmark = self.benchmark.to_dict()

        callback_url: None | str | Unset
        if isinstance(self.callback_url, Unset):
            callback_url = UNSET
        else:
            callback_url = self.callback_url

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "model_id": model_id,
                "passes": passes,
            }
        )
        if calibration_dataset_id is not UNSET:
            field_dict["calibration_dataset_id"] = calibration_dataset_id
        if eval_dataset_id is not UNSET:
            field_dict["eval_dataset_id"] = eval_dataset_id
        if train_dataset_id is not UNSET:
            field_dict["train_dataset_id"] = train_dataset_id
        if outputs is not UNSET:
            field_dict["outputs"] = outputs
        if device is not UNSET:
            field_dict["device"] = device
        if benchmark is not UNSET:
            field_dict["benchmark"] = benchmark
        if callback_url is not UNSET:
            field_dict["callback_url"] = callback_url

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.auto_config import AutoConfig  # noqa: PLC0415
        from ..models.benchmark_settings import BenchmarkSettings  # noqa: PLC0415
        from ..models.bf_16_quantize_config import Bf16QuantizeConfig  # noqa: PLC0415
        from ..models.distill_config import DistillConfig  # noqa: PLC0415
        from ..models.dynamic_quantize_config import DynamicQuantizeConfig  # noqa: PLC0415
        from ..models.export_config import ExportConfig  # noqa: PLC0415
        from ..models.fp_16_quantize_config import Fp16QuantizeConfig  # noqa: PLC0415
        from ..models.full_finetune_config import FullFinetuneConfig  # noqa: PLC0415
        from ..models.lora_finetune_config import LoraFinetuneConfig  # noqa: PLC0415
        from ..models.magnitude_prune_config import MagnitudePruneConfig  # noqa: PLC0415
        from ..models.nm_prune_config import NMPruneConfig  # noqa: PLC0415
        from ..models.obs_prune_config import ObsPruneConfig  # noqa: PLC0415
        from ..models.parallel_adapter_finetune_config import ParallelAdapterFinetuneConfig  # noqa: PLC0415
        from ..models.prefix_finetune_config import PrefixFinetuneConfig  # noqa: PLC0415
        from ..models.series_adapter_finetune_config import SeriesAdapterFinetuneConfig  # noqa: PLC0415
        from ..models.static_quantize_config import StaticQuantizeConfig  # noqa: PLC0415
        from ..models.structured_prune_config import StructuredPruneConfig  # noqa: PLC0415
        from ..models.weight_only_quantize_config import WeightOnlyQuantizeConfig  # noqa: PLC0415

        d = dict(src_dict)
        model_id = d.pop("model_id")

        passes = []
        _passes = d.pop("passes")
        for passes_item_data in _passes:

            def _parse_passes_item(
                data: object,
            ) -> (
                AutoConfig
                | Bf16QuantizeConfig
                | DistillConfig
                | DynamicQuantizeConfig
                | ExportConfig
                | Fp16QuantizeConfig
                | FullFinetuneConfig
                | LoraFinetuneConfig
                | MagnitudePruneConfig
                | NMPruneConfig
                | ObsPruneConfig
                | ParallelAdapterFinetuneConfig
                | PrefixFinetuneConfig
                | SeriesAdapterFinetuneConfig
                | StaticQuantizeConfig
                | StructuredPruneConfig
                | WeightOnlyQuantizeConfig
            ):
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_0 = DynamicQuantizeConfig.from_dict(data)

                    return passes_item_type_0
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_1 = StaticQuantizeConfig.from_dict(data)

                    return passes_item_type_1
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_2 = WeightOnlyQuantizeConfig.from_dict(data)

                    return passes_item_type_2
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_3 = Fp16QuantizeConfig.from_dict(data)

                    return passes_item_type_3
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_4 = Bf16QuantizeConfig.from_dict(data)

                    return passes_item_type_4
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_5 = MagnitudePruneConfig.from_dict(data)

                    return passes_item_type_5
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_6 = ObsPruneConfig.from_dict(data)

                    return passes_item_type_6
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_7 = NMPruneConfig.from_dict(data)

                    return passes_item_type_7
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_8 = StructuredPruneConfig.from_dict(data)

                    return passes_item_type_8
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_9 = ExportConfig.from_dict(data)

                    return passes_item_type_9
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_10 = DistillConfig.from_dict(data)

                    return passes_item_type_10
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_11 = LoraFinetuneConfig.from_dict(data)

                    return passes_item_type_11
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_12 = SeriesAdapterFinetuneConfig.from_dict(data)

                    return passes_item_type_12
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_13 = ParallelAdapterFinetuneConfig.from_dict(data)

                    return passes_item_type_13
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_14 = PrefixFinetuneConfig.from_dict(data)

                    return passes_item_type_14
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                try:
                    if not isinstance(data, dict):
                        raise TypeError()
                    passes_item_type_15 = FullFinetuneConfig.from_dict(data)

                    return passes_item_type_15
                except (TypeError, ValueError, AttributeError, KeyError):
                    pass
                if not isinstance(data, dict):
                    raise TypeError()
                passes_item_type_16 = AutoConfig.from_dict(data)

                return passes_item_type_16

            passes_item = _parse_passes_item(passes_item_data)

            passes.append(passes_item)

        def _parse_calibration_dataset_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        calibration_dataset_id = _parse_calibration_dataset_id(d.pop("calibration_dataset_id", UNSET))

        def _parse_eval_dataset_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        eval_dataset_id = _parse_eval_dataset_id(d.pop("eval_dataset_id", UNSET))

        def _parse_train_dataset_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        train_dataset_id = _parse_train_dataset_id(d.pop("train_dataset_id", UNSET))

        def _parse_outputs(data: object) -> list[JobCreateOutputsType0Item] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                outputs_type_0 = []
                _outputs_type_0 = data
                for outputs_type_0_item_data in _outputs_type_0:
                    outputs_type_0_item = JobCreateOutputsType0Item(outputs_type_0_item_data)

                    outputs_type_0.append(outputs_type_0_item)

                return outputs_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[JobCreateOutputsType0Item] | None | Unset, data)

        outputs = _parse_outputs(d.pop("outputs", UNSET))

        _device = d.pop("device", UNSET)
        device: JobCreateDevice | Unset
        if isinstance(_device, Unset):
            device = UNSET
        else:
            device = JobCreateDevice(_device)

        _benchmark = d.pop("benchmark", UNSET)
        benchmark: BenchmarkSettings | Unset
        if isinstance(_benchmark, Unset):
            benchmark = UNSET
        else:
            benchmark = BenchmarkSettings.from_dict(_benchmark)

        def _parse_callback_url(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        callback_url = _parse_callback_url(d.pop("callback_url", UNSET))

        job_create = cls(
            model_id=model_id,
            passes=passes,
            calibration_dataset_id=calibration_dataset_id,
            eval_dataset_id=eval_dataset_id,
            train_dataset_id=train_dataset_id,
            outputs=outputs,
            device=device,
            benchmark=benchmark,
            callback_url=callback_url,
        )

        return job_create
