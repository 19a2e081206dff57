"""`deepopt`: the command line over the generated Python client (clients/python), plus the server commands.

    deepopt models upload FILE                 deepopt jobs submit --model ID --pass quantize:mode=dynamic --wait
    deepopt datasets upload FILE               deepopt jobs show|list|cancel|watch
    deepopt artifacts download ID              deepopt serve | deepopt worker | deepopt keys create

`--url` (DEEPOPT_URL, default http://127.0.0.1:8000) and `--api-key` (DEEPOPT_API_KEY) say which server; every
command takes `--json` for scripts (the API's JSON on stdout). Errors go to stderr, exit status 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.cli.passes import PassSyntaxError, parse_pass

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")

app = typer.Typer(name="deepopt", help="DeepOpt: model optimization as a service.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Upload and inspect models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload datasets (.npz, .jsonl).", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit, follow, list and cancel optimization jobs.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Download what jobs produced.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
for sub, name in ((models_app, "models"), (datasets_app, "datasets"), (jobs_app, "jobs"),
                  (artifacts_app, "artifacts"), (keys_app, "keys")):
    app.add_typer(sub, name=name)

# Wide when piped (so ids are never cut); plain text, no markup in values.
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts).")]


class State:
    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout: float = 120.0


STATE = State()


@app.callback()
def _global(
    url: Annotated[str, typer.Option("--url", envvar="DEEPOPT_URL", help="The DeepOpt API.")] = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="DEEPOPT_API_KEY",
                                                help="Bearer key (unset for an open server).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one request.")] = 120.0,
) -> None:
    STATE.url, STATE.api_key, STATE.timeout = url.rstrip("/"), api_key or None, timeout


# --- the generated client ---------------------------------------------------------------------------------------


def client() -> Any:
    """The generated client (`deepopt_client`), authenticated when a key is given."""
    try:
        from deepopt_client import AuthenticatedClient, Client
    except ImportError:  # pragma: no cover - an install without clients/python
        fail("the generated client is not installed: pip install -e clients/python")
    timeout = httpx.Timeout(STATE.timeout, connect=10.0)
    if STATE.api_key:
        return AuthenticatedClient(base_url=STATE.url, token=STATE.api_key, timeout=timeout,
                                   raise_on_unexpected_status=False)
    return Client(base_url=STATE.url, timeout=timeout, raise_on_unexpected_status=False)


def fail(message: str, problem: dict[str, Any] | None = None, as_json: bool = False) -> NoReturn:
    if as_json and problem is not None:
        err.print_json(json.dumps(problem))
    else:
        err.print(f"[bold red]error:[/] {escape(message)}")
        fields = (problem or {}).get("errors") or []
        for field in fields if len(fields) > 1 else []:  # one is already the detail
            err.print(escape(f"  {field.get('field')}: {field.get('message')}"))
    raise typer.Exit(1)


def call(operation: Any, as_json: bool = False, **kwargs: Any) -> Any:
    """Run a generated operation's `sync_detailed`; a problem answer or a transport error ends the command."""
    try:
        with client() as api:
            response = operation.sync_detailed(client=api, **kwargs)
    except httpx.TransportError as exc:
        fail(f"cannot reach DeepOpt at {STATE.url}: {exc}")
    if int(response.status_code) >= 400:
        problem = _problem(response.content, int(response.status_code))
        fail(f"{int(response.status_code)} {problem.get('title', '')}: {problem.get('detail', '')}".strip(),
             problem, as_json)
    return response


def _problem(content: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(content)
        return body if isinstance(body, dict) else {"status": status, "detail": str(body)}
    except ValueError:
        return {"status": status, "title": "error", "detail": content[:500].decode(errors="replace")}


def http() -> httpx.Client:
    """The generated client's own httpx client, for streams (events, ranged downloads)."""
    return client().get_httpx_client()  # type: ignore[no-any-return]


def emit(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _as_dict(parsed: Any) -> dict[str, Any]:
    return dict(parsed.to_dict()) if hasattr(parsed, "to_dict") else dict(parsed)


def _size(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GiB"


def _kv(rows: list[tuple[str, Any]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {'-' if value is None else value}" for key, value in rows)


def _shapes(tensors: list[dict[str, Any]]) -> str:
    return ", ".join(f"{t['name']} {t.get('dtype', '')}[{', '.join(str(d) for d in t.get('shape') or ['?'])}]"
                     for t in tensors)


# --- models and datasets ---------------------------------------------------------------------------------------


def _upload(kind: str, path: Path, name: str | None, as_json: bool) -> dict[str, Any]:
    from deepopt_client.types import File

    if kind == "model":
        from deepopt_client.api.models import upload_model as operation
        from deepopt_client.models import UploadModelBody as Body
    else:
        from deepopt_client.api.datasets import upload_dataset as operation  # type: ignore[no-redef]
        from deepopt_client.models import UploadDatasetBody as Body  # type: ignore[assignment]
    if not path.is_file():
        fail(f"no such file: {path}")
    with open(path, "rb") as handle:  # streamed by httpx, never read whole
        body = Body(file=File(payload=handle, file_name=path.name), name=name) if name else Body(
            file=File(payload=handle, file_name=path.name))
        response = call(operation, as_json, body=body)
    return _as_dict(response.parsed)


@models_app.command("upload")
def models_upload(file: Annotated[Path, typer.Argument(help="ONNX, TorchScript, .pt2, or a HF folder archive.")],
                  name: Annotated[str | None, typer.Option(help="A label (default: the file name).")] = None,
                  as_json: JsonOpt = False) -> None:
    """Upload a model; it is inspected before it is accepted."""
    model = _upload("model", file, name, as_json)
    if as_json:
        return emit(model)
    out.print(_kv([("id", model["id"]), ("name", model["name"]), ("format", model["format"]),
                   ("size", f"{model['size_bytes']:,} bytes"), ("parameters", f"{model['num_parameters']:,}"),
                   ("inputs", _shapes(model["inputs"])), ("outputs", _shapes(model["outputs"])),
                   ("sha256", model["sha256"])]))


@models_app.command("show")
def models_show(model_id: str, as_json: JsonOpt = False) -> None:
    """One model with its inspection."""
    from deepopt_client.api.models import read_model

    model = _as_dict(call(read_model, as_json, model_id=model_id).parsed)
    if as_json:
        return emit(model)
    out.print(_kv([("id", model["id"]), ("name", model["name"]), ("format", model["format"]),
                   ("size", f"{model['size_bytes']:,} bytes"), ("parameters", f"{model['num_parameters']:,}"),
                   ("inputs", _shapes(model["inputs"])), ("outputs", _shapes(model["outputs"])),
                   ("created", model["created_at"])]))


@models_app.command("list")
def models_list(limit: Annotated[int, typer.Option(min=1, max=200)] = 20, as_json: JsonOpt = False) -> None:
    """Models, newest first."""
    from deepopt_client.api.models import list_models

    page = _as_dict(call(list_models, as_json, limit=limit).parsed)
    if as_json:
        return emit(page)
    table = Table("id", "name", "format", "size", "parameters", "created")
    for m in page["items"]:
        table.add_row(m["id"], m["name"], m["format"], _size(m["size_bytes"]), f"{m['num_parameters']:,}",
                      str(m["created_at"])[:19])
    out.print(table)


@datasets_app.command("upload")
def datasets_upload(file: Annotated[Path, typer.Argument(help=".npz arrays named after the model inputs (+ labels) "
                                                              "or .jsonl {text, label} records.")],
                    name: Annotated[str | None, typer.Option()] = None, as_json: JsonOpt = False) -> None:
    """Upload a dataset for calibration, evaluation or training."""
    dataset = _upload("dataset", file, name, as_json)
    if as_json:
        return emit(dataset)
    arrays = ", ".join(f"{k}{v}" for k, v in dataset["arrays"].items())
    out.print(_kv([("id", dataset["id"]), ("format", dataset["format"]), ("rows", dataset["num_rows"]),
                   ("arrays", arrays or "-"), ("labels", "yes" if dataset["has_labels"] else "no")]))


# --- jobs ------------------------------------------------------------------------------------------------------


def _submit(body: dict[str, Any], idempotency_key: str | None, as_json: bool) -> dict[str, Any]:
    """Through the generated `submit_job` when the generated models take the body as is; else (a pass this client
    predates, a value the server is to judge) the same request through the client's httpx client."""
    from deepopt_client.api.jobs import submit_job
    from deepopt_client.models import JobCreate

    extra = {"idempotency_key": idempotency_key} if idempotency_key else {}
    try:
        typed = JobCreate.from_dict(body)
        same = typed.to_dict() == body
    except Exception:
        same = False
    if same:
        return _as_dict(call(submit_job, as_json, body=typed, **extra).parsed)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    try:
        response = http().post("/v1/jobs", json=body, headers=headers)
    except httpx.TransportError as exc:
        fail(f"cannot reach DeepOpt at {STATE.url}: {exc}")
    if response.status_code >= 400:
        problem = _problem(response.content, response.status_code)
        fail(f"{response.status_code} {problem.get('title', '')}: {problem.get('detail', '')}", problem, as_json)
    return dict(response.json())


@jobs_app.command("submit")
def jobs_submit(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id.")],
    passes: Annotated[list[str] | None, typer.Option(
        "--pass", "-p", help="TYPE[:key=value,...], in order, e.g. prune:method=magnitude,sparsity=0.5 or "
        "quantize:mode=dynamic,weight_dtype=int8. Values are JSON when they parse as JSON.")] = None,
    spec: Annotated[Path | None, typer.Option(help="A JSON file with the whole job body (options override it).")]
    = None,
    eval_dataset: Annotated[str | None, typer.Option("--eval-dataset", "-e")] = None,
    calibration_dataset: Annotated[str | None, typer.Option("--calibration-dataset", "-c")] = None,
    train_dataset: Annotated[str | None, typer.Option("--train-dataset")] = None,
    output: Annotated[list[str] | None, typer.Option("--output", "-o", help="onnx, torchscript, ...")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", help="Benchmark batch sizes.")] = None,
    runs: Annotated[int | None, typer.Option(help="Timed benchmark runs.")] = None,
    callback_url: Annotated[str | None, typer.Option(help="Signed webhook when the job ends.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="The same key returns the same job.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end with a progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a pipeline of passes over a model."""
    body: dict[str, Any] = json.loads(spec.read_text()) if spec else {}
    body["model_id"] = model
    try:
        if passes:
            body["passes"] = [parse_pass(text) for text in passes]
    except PassSyntaxError as exc:
        fail(str(exc))
    if not body.get("passes"):
        fail("give at least one --pass (or a --spec with passes)")
    for key, value in (("eval_dataset_id", eval_dataset), ("calibration_dataset_id", calibration_dataset),
                       ("train_dataset_id", train_dataset), ("device", device), ("callback_url", callback_url)):
        if value is not None:
            body[key] = value
    if output:
        body["outputs"] = list(output)
    if batch_size or runs:
        bench = dict(body.get("benchmark") or {})
        if batch_size:
            bench["batch_sizes"] = list(batch_size)
        if runs:
            bench["runs"] = runs
        body["benchmark"] = bench
    job = _submit(body, idempotency_key, as_json)
    if not wait:
        return emit(job) if as_json else out.print(f"job {job['id']} {job['status']}")
    if not as_json:
        out.print(f"job {job['id']} {job['status']}")
    final = _follow(job["id"], as_json, quiet_json=True)
    _end(final, as_json)


def _follow(job_id: str, as_json: bool, quiet_json: bool = False) -> dict[str, Any]:
    """Follow the event stream: a live progress bar, or (`--json` without quiet) one JSON line per event."""
    from app.cli.sse import StreamError, follow_job

    http_client = http()
    try:
        if as_json:
            on_state: Callable[[dict[str, Any]], None] = (
                (lambda _state: None) if quiet_json
                else (lambda state: print(json.dumps({"event": "state", **state}), flush=True))
            )
            return follow_job(http_client, job_id, on_state)
        if not err.is_terminal:  # a log, not a bar: one line per change of status or stage
            seen: list[tuple[str, str]] = []

            def on_line(state: dict[str, Any]) -> None:
                key = (str(state["status"]), str(state.get("stage") or "").split(" ", 1)[0])
                if not seen or seen[-1] != key:
                    seen.append(key)
                    err.print(escape(f"  {state['status']:<9} {state.get('stage') or '':<12} "
                                     f"{100 * float(state['progress']):3.0f}%"))

            return follow_job(http_client, job_id, on_line)
        columns = (SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task("queued", total=100)

            def on_progress(state: dict[str, Any]) -> None:
                label = state["status"] if state["status"] != "running" else (state.get("stage") or "running")
                progress.update(task, completed=100 * float(state["progress"]), description=str(label)[:28])

            final = follow_job(http_client, job_id, on_progress)
            progress.update(task, completed=100 * float(final["progress"]), description=final["status"])
            return final
    except StreamError as exc:
        fail(f"{exc.status_code}: {exc}", exc.problem, as_json)
    except httpx.TransportError as exc:
        fail(f"lost the event stream of job {job_id}: {exc}")
    finally:
        http_client.close()


def _end(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(job)
    else:
        _print_job(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def _print_job(job: dict[str, Any]) -> None:
    error = job.get("error")
    rows: list[tuple[str, Any]] = [("id", job["id"]), ("status", job["status"]), ("stage", job.get("stage")),
                                   ("progress", f"{100 * job['progress']:.0f}%"), ("model", job["model_id"]),
                                   ("passes", _recipe(job["spec"])), ("attempts", job["attempts"])]
    if error:
        rows.append(("error", f"{error['code']}: {error['message']}"))
    out.print(_kv(rows))
    artifacts = {a["id"]: a for a in job.get("artifacts", [])}
    if artifacts:
        table = Table("artifact", "kind", "format", "file", "size", title="artifacts", title_justify="left")
        for a in artifacts.values():
            table.add_row(a["id"], a["kind"], a["format"], a["filename"], _size(a["size_bytes"]))
        out.print(table)
    if job.get("benchmarks"):
        table = Table("model", "size", "sparsity", "p50 ms", "accuracy", "fidelity", title="benchmarks",
                      title_justify="left")
        for b in job["benchmarks"]:
            name = "original" if b["artifact_id"] is None else artifacts.get(b["artifact_id"], {}).get("filename", "?")
            metrics = b.get("metrics") or {}
            table.add_row(name, _size(b["size_bytes"]), f"{b['sparsity']:.2f}", _num(b.get("latency_ms_p50")),
                          _num(metrics.get("accuracy")), _num(metrics.get("fidelity_cosine")))
        out.print(table)
    for warning in job.get("warnings") or []:
        out.print(f"warning: {warning}")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _recipe(spec: dict[str, Any]) -> str:
    """`prune(magnitude, sparsity=0.5) -> quantize(dynamic, weight_dtype=int8)` (as the HTML report writes it)."""
    steps = []
    for step in spec.get("passes", []):
        variant = step.get("mode") or step.get("method")
        knobs = [f"{k}={v}" for k, v in step.items() if k in ("sparsity", "weight_dtype", "n", "m", "opset")]
        steps.append(f"{step.get('type')}({', '.join([*([variant] if variant else []), *knobs])})")
    return " -> ".join(steps)


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """A job with its progress, artifacts and benchmarks."""
    from deepopt_client.api.jobs import read_job

    job = _as_dict(call(read_job, as_json, job_id=job_id).parsed)
    emit(job) if as_json else _print_job(job)


@jobs_app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")]
              = None, limit: Annotated[int, typer.Option(min=1, max=200)] = 20, as_json: JsonOpt = False) -> None:
    """Jobs, newest first."""
    from deepopt_client.api.jobs import list_jobs
    from deepopt_client.models import ListJobsStatusType0

    extra = {"status": ListJobsStatusType0(status)} if status else {}
    page = _as_dict(call(list_jobs, as_json, limit=limit, **extra).parsed)
    if as_json:
        return emit(page)
    table = Table("id", "status", "progress", "passes", "created")
    for j in page["items"]:
        table.add_row(j["id"], j["status"], f"{100 * j['progress']:.0f}%", _recipe(j["spec"]),
                      str(j["created_at"])[:19])
    out.print(table)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Cancel: a queued job never starts, a running one is stopped by its worker."""
    from deepopt_client.api.jobs import cancel_job

    job = _as_dict(call(cancel_job, as_json, job_id=job_id).parsed)
    emit(job) if as_json else out.print(f"job {job['id']} {job['status']}"
                                        + (" (stopping)" if job["status"] == "running" else ""))


@jobs_app.command("watch")
def jobs_watch(job_id: str, as_json: JsonOpt = False) -> None:
    """Follow a job's events to its end (`--json`: one line per event, then the final job)."""
    final = _follow(job_id, as_json)
    _end(final, as_json)


# --- artifacts -------------------------------------------------------------------------------------------------


@artifacts_app.command("download")
def artifacts_download(
    artifact_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File or folder (default: the artifact's "
                                                                        "file name here).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download an artifact: resumes a partial download (`FILE.part`) with a range request, checks the sha256."""
    from deepopt_client.api.artifacts import read_artifact

    meta = _as_dict(call(read_artifact, as_json, artifact_id=artifact_id).parsed)
    target = output or Path(meta["filename"])
    if target.is_dir():
        target = target / meta["filename"]
    size, sha256 = int(meta["size_bytes"]), str(meta["sha256"])
    result = {"artifact_id": artifact_id, "path": str(target), "size_bytes": size, "sha256": sha256}
    if target.is_file() and target.stat().st_size == size and _sha256(target) == sha256:
        result["resumed_from"], result["downloaded_bytes"] = size, 0
        return emit(result) if as_json else out.print(f"{target} is already here (sha256 checked)")
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > size:
        partial.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'} if 0 < offset < size else {}
    received = 0
    http_client = http()
    try:
        with http_client.stream("GET", f"/v1/artifacts/{artifact_id}/content", headers=headers) as response:
            if response.status_code == 416 and offset == size:
                pass  # the partial file is complete
            elif response.status_code >= 400:
                response.read()
                problem = _problem(response.content, response.status_code)
                fail(f"{response.status_code}: {problem.get('detail', '')}", problem, as_json)
            else:
                resumed = response.status_code == 206
                if not resumed:
                    offset = 0
                with open(partial, "ab" if resumed else "wb") as handle, _bar(as_json, size, offset) as bar:
                    task = bar.add_task(target.name, total=size, completed=offset)
                    for chunk in response.iter_bytes(1024 * 1024):
                        handle.write(chunk)
                        received += len(chunk)
                        bar.update(task, advance=len(chunk))
    except httpx.TransportError as exc:
        fail(f"the download stopped ({exc}); run the same command again to resume from {partial}")
    finally:
        http_client.close()
    actual = _sha256(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        fail(f"sha256 mismatch ({actual} != {sha256}); the partial file was removed, run the command again")
    os.replace(partial, target)
    result["resumed_from"], result["downloaded_bytes"] = offset, received
    if as_json:
        return emit(result)
    how = f" (resumed at byte {offset:,})" if offset else ""
    out.print(f"{target}: {size:,} bytes{how}, sha256 {sha256[:16]}... checked")


def _bar(as_json: bool, size: int, offset: int) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, console=err, disable=as_json or not err.is_terminal, transient=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --- server side -----------------------------------------------------------------------------------------------


@app.command("serve")
def serve(host: Annotated[str | None, typer.Option(envvar="DEEPOPT_HOST")] = None,
          port: Annotated[int | None, typer.Option(envvar="DEEPOPT_PORT")] = None,
          api_only: Annotated[bool, typer.Option("--api-only", help="No worker in this process group.")] = False
          ) -> None:
    """Migrate, then run the API (and one worker, unless --api-only) until Ctrl-C."""
    if host:
        os.environ["DEEPOPT_HOST"] = host
    if port:
        os.environ["DEEPOPT_PORT"] = str(port)
    from app.launcher import main as launch

    raise typer.Exit(launch(["api" if api_only else "all"]))


@app.command("worker")
def worker(queues: Annotated[str, typer.Option(envvar="DEEPOPT_QUEUES", help="cpu, gpu or cpu,gpu")] = "cpu"
           ) -> None:
    """Migrate, then run a worker on the given queues until Ctrl-C (a running job is finished first)."""
    os.environ["DEEPOPT_QUEUES"] = queues
    from app.launcher import main as launch

    raise typer.Exit(launch(["worker"]))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option(help="A label for listings.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="The key may call the admin API.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Write to this machine's database (DEEPOPT_DATABASE_URL) "
                                                        "instead of calling the admin API: the first key.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue an API key; it is printed once (only its hash is stored)."""
    if local:
        from app.core.db import get_sessionmaker
        from app.core.migrate import upgrade
        from app.services.keys import create_key

        upgrade()
        with get_sessionmaker()() as session:
            row, key = create_key(session, tenant=tenant, name=name, admin=admin)
            created = {"id": row.id, "tenant": row.tenant, "name": row.name, "admin": row.is_admin, "key": key}
    else:
        from deepopt_client.api.admin import issue_key
        from deepopt_client.models import KeyCreate

        created = _as_dict(call(issue_key, as_json, body=KeyCreate(tenant=tenant, name=name, admin=admin)).parsed)
    if as_json:
        return emit(created)
    out.print(_kv([("id", created["id"]), ("tenant", created["tenant"]), ("admin", created["admin"]),
                   ("key", created["key"])]))
    out.print(f"export DEEPOPT_API_KEY={created['key']}   # shown once: only its hash is stored")


def main() -> None:
    app(prog_name="deepopt")


if __name__ == "__main__":
    main()
