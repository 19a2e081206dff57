"""Plan a pipeline before running it: which representation each pass runs on, and where ONNX export happens.

A job may ask for ONNX and PyTorch outputs at once. Each output family is a *track*: the torch track runs
every pass on the PyTorch model; the onnx track runs passes on PyTorch until the last pass that needs it (or an
explicit `export` pass), exports, and runs the rest on the ONNX graph. An ONNX upload whose passes include one
that only runs on PyTorch and accepts a converted model (`accepts_onnx_import`: the prune methods) is imported to
torch before the first such pass (:mod:`deepopt_core.formats.onnx_torch`) and exported back after the last one.
The same function validates a job at submit time (no torch imported) and drives the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepopt_core.registry import get_pass
from deepopt_core.specs import TORCH_FORMATS


@dataclass(frozen=True)
class PlanProblem:
    """A reason a pipeline cannot run, with the location in the job spec (`("passes", 1)`)."""

    loc: tuple[str | int, ...]
    message: str


class PlanError(ValueError):
    def __init__(self, problems: list[PlanProblem]):
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))
        self.problems = problems


@dataclass
class Track:
    """One run of the passes that ends in one representation, saved in `outputs`."""

    representation: str  # "onnx" or "torch"
    outputs: list[str]
    export_before: int | None = None  # index of the pass before which the torch model is exported to ONNX
    import_before: int | None = None  # index of the pass before which an ONNX model is converted to torch
    steps: list[tuple[int, str]] = field(default_factory=list)  # (pass index, representation it runs on)


# ONNX ops that compute shapes while the graph runs. onnx2torch turns their results into Python values, so the
# converted module exported back to ONNX keeps the sample's shapes (or, for some opsets, has no converter at all);
# transformer exports (ViT, GPT-2, Qwen2, BERT) are full of them, MLPs and CNNs with Flatten have none.
SHAPE_OPS = frozenset({"Shape", "Size"})


def onnx_import_problem(op_types: Mapping[str, int], input_shapes: Sequence[Sequence[Any] | None],
                        opset: int | None = None) -> str | None:
    """Why an ONNX model cannot be converted to torch for the prune methods and exported back, or None.

    The one predicate behind both the submit check (from the stored inspection: `op_types`, `inputs`, `opset`)
    and the conversion at run time (:func:`deepopt_core.formats.onnx_torch.onnx_to_torch`, from the graph
    itself), so that the two never disagree: an op (at the graph's opset) that the converter lacks
    (:data:`deepopt_core.formats.onnx_torch_ops.CONVERTIBLE_OPS`), or shapes computed from symbolic inputs (a
    graph of fixed shapes may compute them: they stay what they were).
    """
    from deepopt_core.formats.onnx_torch_ops import unconvertible_ops

    shape_ops = sorted(op for op in SHAPE_OPS if op_types.get(op, 0))
    symbolic = any(shape is None or any(not isinstance(dim, int) for dim in shape) for shape in input_shapes)
    if shape_ops and symbolic:
        return (f"this ONNX model computes shapes while it runs ({', '.join(shape_ops)} ops, as transformer "
                "exports do), which the conversion to PyTorch would fix to one input shape; upload the Hugging "
                "Face folder or a torch.export (.pt2) model instead, or use magnitude or N:M (magnitude) pruning, "
                "which run on the ONNX graph itself")
    missing = unconvertible_ops([op for op, count in op_types.items() if count], opset)
    if missing:
        listed = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        return (f"the conversion of ONNX to PyTorch (onnx2torch) has no converter for {listed}"
                f"{f' at opset {opset}' if opset else ''}; upload the Hugging Face folder or a torch.export (.pt2) "
                "model instead, or use magnitude or N:M (magnitude) pruning, which run on the ONNX graph itself")
    return None


def _representations(spec: Any) -> tuple[str, ...]:
    """Where a pass can run: the config's own answer for its settings (`representations()`), else the pass's."""
    own = getattr(spec, "representations", None)
    return tuple(own()) if callable(own) else tuple(get_pass(spec.type).representations)


def default_outputs(model_format: str, passes: list[Any]) -> list[str]:
    if model_format == "onnx" or any(p.type == "export" for p in passes):
        return ["onnx"]
    return [model_format]


def plan(model_format: str, passes: list[Any], outputs: list[str] | None,
         details: Mapping[str, Any] | None = None) -> list[Track]:
    """Return the tracks that produce `outputs` from a model of `model_format` (with the upload's inspected
    `details`, when known), or raise `PlanError`."""
    outputs = list(dict.fromkeys(outputs or default_outputs(model_format, passes)))
    problems: list[PlanProblem] = []
    tracks: list[Track] = []
    source_is_torch = model_format in TORCH_FORMATS

    torch_outputs = [o for o in outputs if o in TORCH_FORMATS]
    if torch_outputs:
        if not source_is_torch:
            problems.append(PlanProblem(("outputs",), f"{torch_outputs} needs a PyTorch model; this one is ONNX"))
        else:
            track = Track("torch", torch_outputs)
            for i, spec in enumerate(passes):
                if spec.type == "export":
                    continue
                if "torch" not in _representations(spec):
                    problems.append(PlanProblem(("passes", i), f"{spec.type!r} has no PyTorch implementation"))
                track.steps.append((i, "torch"))
            if "hf" in torch_outputs and model_format != "hf":
                problems.append(PlanProblem(("outputs",), "'hf' output needs a Hugging Face model upload"))
            if "torch_export" in torch_outputs and model_format == "torchscript":
                problems.append(PlanProblem(
                    ("outputs",), "a TorchScript model cannot be re-exported with torch.export; ask for "
                    "'torchscript' or 'onnx' output"))
            if "torchscript" in torch_outputs and model_format == "torch_export" and (details or {}).get(
                    "computes_with_sizes"):
                # A trace records the sizes it reads as the example's numbers: the TorchScript would run at one
                # batch size only (the ONNX track re-exports such programs with the dynamo exporter instead).
                problems.append(PlanProblem(
                    ("outputs",), "this torch.export program computes with its input sizes, which a trace to "
                    "TorchScript would fix to one shape; ask for 'torch_export' or 'onnx' output"))
            # A config may refuse output formats its PyTorch result cannot be saved in (`output_problem`): packed
            # int8 dynamic quantization as .pt2 or safetensors, weight-only layers as safetensors.
            for i, _ in track.steps:
                output_check = getattr(passes[i], "output_problem", None)
                for fmt in torch_outputs:
                    message = output_check(fmt) if callable(output_check) else None
                    if message:
                        problems.append(PlanProblem(("passes", i), message))
            tracks.append(track)

    if "onnx" in outputs:
        track = Track("onnx", ["onnx"])
        if source_is_torch:
            needs_torch = [i for i, s in enumerate(passes) if "onnx" not in _representations(s)]
            explicit = [i for i, s in enumerate(passes) if s.type == "export"]
            # Export after the last pass that only runs on PyTorch; an explicit export pass may move it later.
            export_at = max(needs_torch + explicit, default=-1)
            export_at = export_at if export_at >= 0 and passes[export_at].type == "export" else export_at + 1
            track.export_before = export_at
            for i, spec in enumerate(passes):
                if spec.type == "export":
                    continue
                rep = "torch" if i < export_at else "onnx"
                if rep not in _representations(spec):
                    problems.append(PlanProblem(("passes", i), f"{spec.type!r} cannot run on {rep} here"))
                track.steps.append((i, rep))
        else:
            needs_torch = [i for i, s in enumerate(passes) if s.type != "export" and "onnx" not in _representations(s)]
            convertible = [i for i in needs_torch if getattr(passes[i], "accepts_onnx_import", False)]
            if convertible:
                # Convert once, before the first pass that needs torch, and export after the last one.
                track.import_before, track.export_before = min(convertible), max(convertible) + 1
            for i, spec in enumerate(passes):
                torch_span = track.import_before is not None and track.import_before <= i < (track.export_before or 0)
                if spec.type == "export":
                    problems.append(PlanProblem(("passes", i), "export converts PyTorch models; this one is ONNX"))
                elif i in needs_torch and i not in convertible:
                    problems.append(PlanProblem(("passes", i), f"{spec.type!r} needs a PyTorch model"))
                elif torch_span and "torch" not in _representations(spec):
                    problems.append(PlanProblem(("passes", i), f"{spec.type!r} cannot run on torch here (between "
                                                "the passes that convert the ONNX model to PyTorch)"))
                else:
                    track.steps.append((i, "torch" if torch_span else "onnx"))
        tracks.append(track)

    for track in tracks:
        for i, rep in track.steps:
            check = getattr(passes[i], "representation_problem", None)
            message = check(rep) if callable(check) else None
            if message and PlanProblem(("passes", i), message) not in problems:
                problems.append(PlanProblem(("passes", i), message))

    if problems:
        raise PlanError(problems)
    return tracks
