"""Command line of the core, used by the API and the worker as a child process.

``python -m deepopt_core.cli inspect PATH``
    Prints one :class:`deepopt_core.protocol.Inspected` line (the ModelInfo) and exits 0; on a bad file one
    :class:`~deepopt_core.protocol.Failure` line and exits 2.

``python -m deepopt_core.cli run REQUEST_JSON``
    The request is a :class:`deepopt_core.protocol.RunRequest` (with the model's stored inspection, the model is
    not inspected again). Prints :class:`~deepopt_core.protocol.Progress` lines (the fraction, the pass it is in;
    training passes add their latest metrics), then writes ``<workdir>/result.json`` (a
    :class:`deepopt_core.result.Result`) and prints a :class:`~deepopt_core.protocol.Done` line (exit 0). On bad
    input or a failed pass it prints a :class:`~deepopt_core.protocol.Failure` line and exits 3; any other
    failure exits 1 with a traceback on stderr.

``python -m deepopt_core.cli trial REQUEST_JSON``
    One `auto` trial on a bundle (a :class:`deepopt_core.protocol.TrialRequest`); writes ``<workdir>/trial.json``
    (``{"status": "succeeded", "measurement"}`` or ``{"status": "failed", "error"}``) and the trial's model
    ``<workdir>/trial.onnx``, prints a Done line and exits 0.

A request that is not valid exits 1 with the validation error on stderr.

The API and the workers run these commands inside :mod:`deepopt_core.sandbox` and read stdout only as the
messages of :mod:`deepopt_core.protocol`.
stdout carries only these JSON lines: everything else (logging, warnings, library prints, even native code
writing to file descriptor 1) goes to stderr.
"""

from __future__ import annotations

import argparse
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
    from deepopt_core.protocol import Done, Failure, RunRequest, read_message

    request = read_message(request_path, RunRequest)
    workdir = request.workdir
    data = {role: str(path) for role, path in request.data if path}
    if request.trial_dispatch:
        from deepopt_core.passes.auto.remote import use_dispatch

        use_dispatch(request.trial_dispatch)
    try:
        model_info = request.model_info
        if model_info is None and request.model_format:
            from deepopt_core.formats import inspect_model

            model_info = inspect_model(request.model, request.model_format)
        extra_models: dict[str, str | Path] = dict(request.extra_models)
        result = optimize(
            request.model, request.passes, data, request.outputs, workdir=workdir, device=request.device or "cpu",
            benchmark=request.benchmark, on_event=lambda event: _emit(out, event), model_info=model_info,
            model_name=request.model_name, extra_models=extra_models or None,
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
    from deepopt_core.protocol import Done, TrialRequest, read_message

    run_trial_request(read_message(request_path, TrialRequest))
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
