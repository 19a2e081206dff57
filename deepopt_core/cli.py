"""Command line of the core, used by the API and the worker as a child process.

``python -m deepopt_core.cli inspect PATH``
    Prints one :class:`deepopt_core.protocol.Inspected` line (the ModelInfo) and exits 0; on a bad file one
    :class:`~deepopt_core.protocol.Failure` line and exits 2.

``python -m deepopt_core.cli run REQUEST_JSON``
    The request is ``{"model", "model_format"?, "model_name"?, "passes", "data": {"calibration", "eval", "train"},
    "outputs", "device", "benchmark", "workdir", "extra_models"?: {model_id: path}, "trial_dispatch"?: folder}``
    (``extra_models``: other uploaded models that passes name, such as a distillation student;
    ``trial_dispatch``: a folder through which the worker runs `auto` trials on other workers too, see
    :mod:`deepopt_core.passes.auto.remote`). Prints :class:`~deepopt_core.protocol.Progress` lines (training
    passes add their latest metrics), then writes ``<workdir>/result.json`` (a
    :class:`deepopt_core.result.Result`) and prints a :class:`~deepopt_core.protocol.Done` line (exit 0). On bad
    input or a failed pass it prints a :class:`~deepopt_core.protocol.Failure` line and exits 3; any other
    failure exits 1 with a traceback on stderr.

``python -m deepopt_core.cli trial REQUEST_JSON``
    One `auto` trial on a bundle: ``{"bundle", "number", "recipe", "workdir", "worker"}``; writes
    ``<workdir>/trial.json`` (``{"status": "succeeded", "measurement"}`` or ``{"status": "failed", "error"}``) and
    the trial's model ``<workdir>/trial.onnx``, prints a Done line and exits 0.

The API and the workers run these commands inside :mod:`deepopt_core.sandbox` and read stdout only as the
messages of :mod:`deepopt_core.protocol`.
stdout carries only these JSON lines: everything else (logging, warnings, library prints, even native code
writing to file descriptor 1) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

EXIT_BAD_FILE = 2
EXIT_FAILED = 3


@contextmanager
def json_stdout() -> Iterator[TextIO]:
    """Point fd 1 (and ``sys.stdout``) at stderr; yield a stream on the real stdout for the JSON lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    stream = os.fdopen(saved, "w", buffering=1, encoding="utf-8")
    try:
        yield stream
    finally:
        stream.flush()
        sys.stdout = real_stdout
        os.dup2(saved, 1)
        stream.close()


def _emit(stream: TextIO, event: Any) -> None:
    from deepopt_core.protocol import dump

    stream.write(dump(event) + "\n")
    stream.flush()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("deepopt").setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _inspect(path: str, model_format: str | None, out: TextIO) -> int:
    from deepopt_core.errors import DeepOptError
    from deepopt_core.formats import inspect_model
    from deepopt_core.protocol import Failure, Inspected

    try:
        info = inspect_model(path, model_format)  # type: ignore[arg-type]
    except DeepOptError as exc:
        _emit(out, Failure(code=exc.code, status=exc.status, message=exc.message[:8000], field=exc.field))
        return EXIT_BAD_FILE
    except FileNotFoundError:
        _emit(out, Failure(code="not_found", status=422, message=f"no such file: {path}"))
        return EXIT_BAD_FILE
    _emit(out, Inspected(info=info))
    return 0


def _run(request_path: str, out: TextIO) -> int:
    from deepopt_core.errors import DeepOptError, PassFailed
    from deepopt_core.pipeline import optimize
    from deepopt_core.protocol import Done, Failure, Progress

    request = json.loads(Path(request_path).read_text())
    workdir = Path(request["workdir"])
    data = {k: v for k, v in (request.get("data") or {}).items() if v}
    if request.get("trial_dispatch"):
        from deepopt_core.passes.auto.remote import use_dispatch

        use_dispatch(request["trial_dispatch"])

    def on_progress(fraction: float, stage: str, metrics: dict[str, Any] | None = None) -> None:
        _emit(out, Progress(progress=min(max(fraction, 0.0), 1.0), stage=stage[:200], metrics=metrics or None))

    try:
        model_info = None
        if request.get("model_format"):
            from deepopt_core.formats import inspect_model

            model_info = inspect_model(request["model"], request["model_format"])
        result = optimize(
            request["model"], request.get("passes") or [], data, request.get("outputs"), workdir=workdir,
            device=request.get("device") or "cpu", benchmark=request.get("benchmark"), on_progress=on_progress,
            model_info=model_info, model_name=request.get("model_name"),
            extra_models=request.get("extra_models") or None,
        )  # fmt: skip
    except (DeepOptError, PassFailed) as exc:
        logging.getLogger("deepopt.cli").error("pipeline failed: %s", exc)
        _emit(out, Failure(code=exc.code, message=str(exc)[:8000]))
        return EXIT_FAILED
    (workdir / "result.json").write_text(result.model_dump_json(indent=2))
    _emit(out, Done())
    return 0


def _trial(request_path: str, out: TextIO) -> int:
    from deepopt_core.passes.auto.remote import run_trial_request
    from deepopt_core.protocol import Done

    run_trial_request(json.loads(Path(request_path).read_text()))
    _emit(out, Done())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m deepopt_core.cli", description="DeepOpt core commands")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect_parser = commands.add_parser("inspect", help="print a model file's ModelInfo as JSON")
    inspect_parser.add_argument("path")
    inspect_parser.add_argument("--format", dest="model_format", default=None)
    run_parser = commands.add_parser("run", help="run a pipeline request (JSON file)")
    run_parser.add_argument("request")
    trial_parser = commands.add_parser("trial", help="run one trial of an auto search on a bundle (JSON request)")
    trial_parser.add_argument("request")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    with json_stdout() as out:
        try:
            if args.command == "inspect":
                return _inspect(args.path, args.model_format, out)
            if args.command == "trial":
                return _trial(args.request, out)
            return _run(args.request, out)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
