from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.benchmark_settings_graph_optimization_level import BenchmarkSettingsGraphOptimizationLevel
from ..types import UNSET, Unset

T = TypeVar("T", bound="BenchmarkSettings")


@_attrs_define
class BenchmarkSettings:
    """How the original and every output are timed; the same settings for all, in the same process.

    Attributes:
        batch_sizes (list[int] | Unset):
        runs (int | Unset): Timed runs per batch size, after warm-up. Default: 50.
        warmup (int | Unset):  Default: 5.
        threads (int | None | Unset): Intra-op threads; default: all cores.
        graph_optimization_level (BenchmarkSettingsGraphOptimizationLevel | Unset): ONNX Runtime graph optimizations
            applied when timing ONNX models. Default: BenchmarkSettingsGraphOptimizationLevel.ALL.
        max_accuracy_drop (float | None | Unset): Warn on an artifact whose accuracy drops by more than this (absolute).
    """

    batch_sizes: list[int] | Unset = UNSET
    runs: int | Unset = 50
    warmup: int | Unset = 5
    threads: int | None | Unset = UNSET
    graph_optimization_level: BenchmarkSettingsGraphOptimizationLevel | Unset = (
        BenchmarkSettingsGraphOptimizationLevel.ALL
    )
    max_accuracy_drop: float | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        batch_sizes: list[int] | Unset = UNSET
        if not isinstance(self.batch_sizes, Unset):
            batch_sizes = self.batch_sizes

        runs = self.runs

        warmup = self.warmup

        threads: int | None | Unset
        if isinstance(self.threads, Unset):
            threads = UNSET
        else:
            threads = self.threads

        graph_optimization_level: str | Unset = UNSET
        if not isinstance(self.graph_optimization_level, Unset):
            graph_optimization_level = self.graph_optimization_level.value

        max_accuracy_drop: float | None | Unset
        if isinstance(self.max_accuracy_drop, Unset):
            max_accuracy_drop = UNSET
        else:
            max_accuracy_drop = self.max_accuracy_drop

        field_dict: dict[str, Any] = {}

        field_dict.update({})
        if batch_sizes is not UNSET:
            field_dict["batch_sizes"] = batch_sizes
        if runs is not UNSET:
            field_dict["runs"] = runs
        if warmup is not UNSET:
            field_dict["warmup"] = warmup
        if threads is not UNSET:
            field_dict["threads"] = threads
        if graph_optimization_level is not UNSET:
            field_dict["graph_optimization_level"] = graph_optimization_level
        if max_accuracy_drop is not UNSET:
            field_dict["max_accuracy_drop"] = max_accuracy_drop

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        batch_sizes = cast(list[int], d.pop("batch_sizes", UNSET))

        runs = d.pop("runs", UNSET)

        warmup = d.pop("warmup", UNSET)

        def _parse_threads(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        threads = _parse_threads(d.pop("threads", UNSET))

        _graph_optimization_level = d.pop("graph_optimization_level", UNSET)
        graph_optimization_level: BenchmarkSettingsGraphOptimizationLevel | Unset
        if isinstance(_graph_optimization_level, Unset):
            graph_optimization_level = UNSET
        else:
            graph_optimization_level = BenchmarkSettingsGraphOptimizationLevel(_graph_optimization_level)

        def _parse_max_accuracy_drop(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        max_accuracy_drop = _parse_max_accuracy_drop(d.pop("max_accuracy_drop", UNSET))

        benchmark_settings = cls(
            batch_sizes=batch_sizes,
            runs=runs,
            warmup=warmup,
            threads=threads,
            graph_optimization_level=graph_optimization_level,
            max_accuracy_drop=max_accuracy_drop,
        )

        return benchmark_settings
