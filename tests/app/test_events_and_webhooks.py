"""Event streams, webhooks and metrics of the in-process API (a real SQLite store; no worker: the tests end jobs
by cancelling them, and send webhooks by calling the workers' sender directly, to a real receiver on loopback)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.passes import PassSyntaxError, parse_pass
from app.cli.sse import Event, parse_events
from app.core.config import get_settings
from tests.app.test_models import assert_problem
from tests.conftest import WebhookReceiver

PIPELINE = [{"type": "prune", "method": "magnitude", "sparsity": 0.5}]


@pytest.fixture
def model_id(client: httpx.Client, tiny_onnx: Path) -> str:
    return str(client.post("/v1/models", files={"file": ("tiny.onnx", tiny_onnx.read_bytes())}).json()["id"])


def read_events(client: httpx.Client, job_id: str, **headers: str) -> tuple[httpx.Response, list[Event]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        events = [e for e in parse_events(response.iter_lines()) if e.event]
    return response, events


def test_sse_parser_follows_the_event_stream_rules() -> None:
    lines = ["retry: 500", "", ": a comment", "event: state", "id: 3", "data: {\"a\":", "data: 1}", "",
             "data:plain", "", "id: x\0y", "event: job", "data: {}", ""]
    events = list(parse_events(lines))
    assert events[0].retry == 500 and events[0].event == ""
    assert (events[1].event, events[1].id, events[1].json()) == ("state", "3", {"a": 1})
    assert (events[2].event, events[2].data, events[2].id) == ("message", "plain", "3")  # the id carries on
    assert (events[3].event, events[3].id) == ("job", "3")  # an id with NUL is ignored


def test_pass_syntax_of_the_cli() -> None:
    assert parse_pass("prune:method=magnitude,sparsity=0.5") == {"type": "prune", "method": "magnitude",
                                                                 "sparsity": 0.5}
    assert parse_pass("quantize") == {"type": "quantize"}
    assert parse_pass('prune:exclude=["fc1","fc2"],scope=layer') == {"type": "prune", "exclude": ["fc1", "fc2"],
                                                                     "scope": "layer"}
    assert parse_pass("quantize:accuracy_guard={\"max_drop\":0.01,\"metric\":\"accuracy\"},per_channel=true") == {
        "type": "quantize", "accuracy_guard": {"max_drop": 0.01, "metric": "accuracy"}, "per_channel": True}
    for bad in (":x=1", "prune:sparsity", "prune:exclude=[a"):
        with pytest.raises(PassSyntaxError):
            parse_pass(bad)


def test_event_stream_of_a_job_and_resuming_it(client: httpx.Client, model_id: str) -> None:
    job = client.post("/v1/jobs", json={"model_id": model_id, "passes": PIPELINE}).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"

    response, events = read_events(client, job["id"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert [e.event for e in events] == ["state", "job"]
    state, final = events[0].json(), events[1].json()
    assert state["status"] == "cancelled" and state["version"] == 1 and events[0].id == "1"
    assert events[1].id == "1-end"
    assert final == client.get(f"/v1/jobs/{job['id']}").json()  # the last event is the job itself

    # Reconnecting: after the state event only the final job comes; after the final one, nothing (204).
    _, resumed = read_events(client, job["id"], **{"Last-Event-ID": "1"})
    assert [e.event for e in resumed] == ["job"]
    done, nothing = read_events(client, job["id"], **{"Last-Event-ID": "1-end"})
    assert done.status_code == 204 and nothing == []
    _, garbage = read_events(client, job["id"], **{"Last-Event-ID": "whatever"})
    assert [e.event for e in garbage] == ["state", "job"]  # an unknown id: the current state again
    _, ahead = read_events(client, job["id"], **{"Last-Event-ID": "99"})
    assert [e.event for e in ahead] == ["state", "job"]  # an id this job never had: the same
    assert_problem(client.get("/v1/jobs/nope/events"), 404)


def test_callback_url_must_be_public_http(client: httpx.Client, model_id: str) -> None:
    for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x", "http://10.1.2.3/x",
                "http://192.168.0.10/x", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/",
                "http://[::ffff:127.0.0.1]/x", "http://2130706433/x", "ftp://example.com/x", "file:///etc/passwd",
                "https:///nohost", "http://no-such-host.invalid/x"):
        body = {"model_id": model_id, "passes": PIPELINE, "callback_url": url}
        assert_problem(client.post("/v1/jobs", json=body), 422, "callback_url")
    assert client.get("/v1/jobs").json()["items"] == []
    public = {"model_id": model_id, "passes": PIPELINE, "callback_url": "https://93.184.215.14/hooks/deepopt"}
    job = client.post("/v1/jobs", json=public)
    assert job.status_code == 202, job.text
    delivery = client.get(f"/v1/jobs/{job.json()['id']}/webhook").json()
    assert delivery["status"] == "pending" and delivery["attempts"] == 0
    assert delivery["url"] == public["callback_url"]
    no_hook = client.post("/v1/jobs", json={"model_id": model_id, "passes": PIPELINE}).json()
    assert_problem(client.get(f"/v1/jobs/{no_hook['id']}/webhook"), 404)


def _signed_by(request: dict[str, Any], secret: str) -> bool:
    from app.services.webhooks import verify

    headers = {k.lower(): v for k, v in request["headers"].items()}  # type: ignore[union-attr]
    return verify(secret, request["body"], headers["x-deepopt-signature"])  # type: ignore[arg-type]


def test_webhook_is_signed_retried_and_recorded(client: httpx.Client, model_id: str,
                                                webhook_receiver: WebhookReceiver,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.webhooks import deliver_due

    settings = get_settings()
    monkeypatch.setattr(settings, "webhook_allow_private", True)  # the receiver is on loopback
    monkeypatch.setattr(settings, "webhook_backoff_s", 0.05)
    webhook_receiver.statuses = [500]  # the first try fails
    body = {"model_id": model_id, "passes": PIPELINE, "callback_url": webhook_receiver.url}
    job = client.post("/v1/jobs", json=body).json()
    assert deliver_due() == 0  # nothing is sent before the job ends
    client.post(f"/v1/jobs/{job['id']}/cancel")

    assert deliver_due() == 1
    first = client.get(f"/v1/jobs/{job['id']}/webhook").json()
    assert first["status"] == "pending" and first["attempts"] == 1 and first["last_status_code"] == 500
    assert first["last_error"] == "HTTP 500" and first["next_attempt_at"]
    time.sleep(0.2)
    assert deliver_due() == 1
    delivered = client.get(f"/v1/jobs/{job['id']}/webhook").json()
    assert delivered["status"] == "delivered" and delivered["attempts"] == 2 and delivered["delivered_at"]
    assert delivered["event"] == "job.cancelled" and delivered["last_status_code"] == 204
    assert deliver_due() == 0  # delivered once

    requests = webhook_receiver.wait_for(2)
    secret = client.get("/v1/webhooks/secret").json()
    assert secret["source"] == "generated" and secret["secret"].startswith("whsec_")
    for attempt, request in enumerate(requests, start=1):
        assert _signed_by(request, secret["secret"])
        payload = json.loads(request["body"])  # type: ignore[arg-type]
        assert payload["event"] == "job.cancelled" and payload["attempt"] == attempt
        assert payload["job"]["id"] == job["id"] and payload["job"]["status"] == "cancelled"
        assert payload["delivery_id"] == delivered["id"]
        assert request["headers"]["X-DeepOpt-Event"] == "job.cancelled"  # type: ignore[index]
    assert not _signed_by(requests[0], "another secret")

    rotated = client.post("/v1/webhooks/secret/rotate").json()
    assert rotated["secret"] != secret["secret"]
    assert client.get("/v1/webhooks/secret").json()["secret"] == rotated["secret"]


def test_webhook_gives_up_and_refuses_private_addresses_at_send_time(
        client: httpx.Client, model_id: str, webhook_receiver: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.webhooks import deliver_due

    settings = get_settings()
    monkeypatch.setattr(settings, "webhook_allow_private", True)
    monkeypatch.setattr(settings, "webhook_backoff_s", 0.01)
    monkeypatch.setattr(settings, "webhook_max_attempts", 2)
    webhook_receiver.statuses = [503, 503, 503]
    failing = client.post("/v1/jobs", json={"model_id": model_id, "passes": PIPELINE,
                                            "callback_url": webhook_receiver.url}).json()
    client.post(f"/v1/jobs/{failing['id']}/cancel")
    deliver_due()
    time.sleep(0.1)
    deliver_due()
    gave_up = client.get(f"/v1/jobs/{failing['id']}/webhook").json()
    assert gave_up["status"] == "failed" and gave_up["attempts"] == 2 and gave_up["next_attempt_at"] is None

    # Accepted while the operator allowed private addresses, refused once they no longer are: nothing is sent.
    refused = client.post("/v1/jobs", json={"model_id": model_id, "passes": PIPELINE,
                                            "callback_url": webhook_receiver.url}).json()
    client.post(f"/v1/jobs/{refused['id']}/cancel")
    monkeypatch.setattr(settings, "webhook_allow_private", False)
    sent_before = len(webhook_receiver.requests)
    deliver_due()
    record = client.get(f"/v1/jobs/{refused['id']}/webhook").json()
    assert record["status"] == "pending" and "non-public" in record["last_error"]
    assert len(webhook_receiver.requests) == sent_before


def test_guarded_connections_never_reach_loopback(webhook_receiver: WebhookReceiver, app_env: Path) -> None:
    """Even past the URL check (a name that re-resolves, say), the connection itself refuses non-public addresses."""
    from app.services.webhooks import UnsafeAddress, _guarded_client

    settings = get_settings()
    with _guarded_client(settings) as guarded, pytest.raises(UnsafeAddress):
        guarded.post(webhook_receiver.url.replace("127.0.0.1", "localhost"), content=b"{}")
    assert webhook_receiver.requests == []
    settings.webhook_allow_private = True
    try:
        with _guarded_client(settings) as allowed:
            assert allowed.post(webhook_receiver.url, content=b"{}").status_code == 204
    finally:
        settings.webhook_allow_private = False


def test_webhook_secret_from_settings(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "webhook_secrets", "local:s3cret, other:x")
    assert client.get("/v1/webhooks/secret").json() == {"tenant": "local", "secret": "s3cret", "source": "settings"}
    assert_problem(client.post("/v1/webhooks/secret/rotate"), 409)


def test_metrics_report_durations_workers_and_webhooks(client: httpx.Client, model_id: str) -> None:
    from app.services.histograms import JOB_DURATION, PASS_DURATION, observe
    from worker.presence import beat, leave

    observe(PASS_DURATION, "prune", 0.2)
    observe(PASS_DURATION, "prune", 42.0)
    observe(JOB_DURATION, "prune", 50.0)
    beat()
    client.post("/v1/jobs", json={"model_id": model_id, "passes": PIPELINE})
    text = client.get("/metrics").text
    assert 'deepopt_pass_duration_seconds_bucket{le="0.25",pass_type="prune"} 1.0' in text
    assert 'deepopt_pass_duration_seconds_bucket{le="60.0",pass_type="prune"} 2.0' in text
    assert 'deepopt_pass_duration_seconds_count{pass_type="prune"} 2.0' in text
    assert 'deepopt_pass_duration_seconds_sum{pass_type="prune"} 42.2' in text
    assert 'deepopt_job_duration_seconds_count{pass_type="prune"} 1.0' in text
    assert 'deepopt_workers{queue="cpu",state="alive"} 1.0' in text
    assert "deepopt_worker_last_heartbeat_timestamp_seconds{" in text
    assert 'deepopt_queue_depth{queue="cpu"} 1.0' in text
    assert 'deepopt_broker_queue_messages{queue="cpu"} 1.0' in text  # the filesystem broker's message
    assert 'deepopt_webhook_deliveries{status="pending"} 0.0' in text
    leave()
    assert 'deepopt_workers{queue="cpu",state="alive"} 0.0' in client.get("/metrics").text


def test_grafana_dashboard_uses_real_metrics(client: httpx.Client) -> None:
    """Every metric the dashboard queries is one /metrics exposes (or a histogram's series of one)."""
    import re

    from tests.conftest import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    exposed = {line.split(" ")[2] for line in client.get("/metrics").text.splitlines() if line.startswith("# TYPE")}
    for expr in exprs:
        for name in set(re.findall(r"\b(deepopt_[a-z0-9_]+)", expr)):
            base = re.sub(r"_(bucket|count|sum|total)$", "", name)
            assert name in exposed or base in exposed, f"{name} in {expr!r} is not exposed"


def test_cli_follower_reconnects_with_last_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's follower: a stream cut before the final event is resumed with the last id it saw."""
    import app.cli.sse as sse

    monkeypatch.setattr(sse.time, "sleep", lambda _s: None)
    seen_headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_headers.append(request.headers.get("last-event-id"))
        if len(seen_headers) == 1:  # the first connection drops after two states
            body = ('retry: 10\n\nevent: state\nid: 1\ndata: {"status":"running","progress":0.1}\n\n'
                    'event: state\nid: 2\ndata: {"status":"running","progress":0.5}\n\n')
        elif len(seen_headers) == 2:
            raise httpx.ReadError("connection reset")
        else:
            body = ('event: state\nid: 3\ndata: {"status":"succeeded","progress":1.0}\n\n'
                    'event: job\nid: 3-end\ndata: {"id":"j","status":"succeeded"}\n\n')
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())

    states: list[dict[str, Any]] = []
    with httpx.Client(base_url="http://deepopt.test", transport=httpx.MockTransport(handler)) as http:
        final = sse.follow_job(http, "j", states.append)
    assert final == {"id": "j", "status": "succeeded"}
    assert [s["progress"] for s in states] == [0.1, 0.5, 1.0]
    assert seen_headers == [None, "2", "2"]
