"""Webhooks: a job with a `callback_url` gets one signed POST when it ends, retried with backoff until a 2xx.

- The delivery row is created with the job, in the same transaction, so no ended job can miss its webhook;
  workers send due deliveries (`deliver_due`, in a loop next to the reaper). A delivery is claimed with a
  conditional UPDATE that pushes `next_attempt_at` past the send's time limit, so two workers never send the
  same attempt, and a worker that dies mid-send leaves it to be retried.
- The body is JSON `{"event": "job.succeeded", "delivery_id", "attempt", "sent_at", "job": {...}}`, signed as
  `X-DeepOpt-Signature: sha256=<hex HMAC-SHA256(tenant secret, raw body)>`.
- Only http(s), and never to loopback, private, link-local or otherwise non-public addresses unless
  `DEEPOPT_WEBHOOK_ALLOW_PRIVATE` is set: checked when the job is submitted, and again on every send against
  the addresses the name resolves to then; the connection goes to a checked address (so a name that
  re-resolves to an internal address between check and connect is refused), and redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.db.models import TERMINAL_STATUSES, Job, WebhookDelivery, WebhookSecret, utcnow

log = logging.getLogger("deepopt.webhooks")

SIGNATURE_HEADER = "X-DeepOpt-Signature"
MAX_BACKOFF_S = 3600.0


class UnsafeAddress(Exception):
    """The callback URL's host resolves to an address webhooks may not be sent to."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_callback_url(url: str, allow_private: bool) -> str | None:
    """None when webhooks may be sent to `url`, else why not."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "only http and https callback URLs are allowed"
    if not parts.hostname:
        return "the URL has no host"
    try:
        addresses = resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        return f"the host {parts.hostname!r} does not resolve"
    if not allow_private:
        blocked = [a for a in addresses if not is_public_address(a)]
        if blocked:
            return (f"the host {parts.hostname!r} resolves to non-public addresses {blocked}; webhooks go only to "
                    "public addresses unless the operator sets DEEPOPT_WEBHOOK_ALLOW_PRIVATE")
    return None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does (shown here for the tests and the docs)."""
    return hmac.compare_digest(sign(secret, body), signature)


def secret_for(session: Session, tenant: str, settings: Settings | None = None) -> tuple[str, str]:
    """The tenant's webhook secret and where it comes from (`settings` or `generated`, kept in the database)."""
    settings = settings or get_settings()
    configured = settings.tenant_webhook_secrets().get(tenant)
    if configured:
        return configured, "settings"
    row = session.get(WebhookSecret, tenant)
    if row is None:
        session.add(WebhookSecret(tenant=tenant, secret="whsec_" + secrets.token_urlsafe(32)))
        try:
            session.commit()
        except IntegrityError:  # another process created it first
            session.rollback()
        row = session.get(WebhookSecret, tenant)
        assert row is not None
    return row.secret, "generated"


def rotate_secret(session: Session, tenant: str) -> str:
    row = session.get(WebhookSecret, tenant)
    secret = "whsec_" + secrets.token_urlsafe(32)
    if row is None:
        session.add(WebhookSecret(tenant=tenant, secret=secret))
    else:
        row.secret = secret
        row.created_at = utcnow()
    session.commit()
    return secret


def backoff_s(attempt: int, settings: Settings) -> float:
    """Delay after failed attempt number `attempt` (1-based): base * 2^(attempt-1), at most an hour, +-20%."""
    delay = min(settings.webhook_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
    return delay * random.uniform(0.8, 1.2)


def _guarded_client(settings: Settings) -> Any:
    """An httpx client whose connections go only to addresses that pass the check, resolved at connect time."""
    import httpcore
    import httpx

    allow_private = settings.webhook_allow_private

    class GuardedBackend(httpcore.SyncBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None, socket_options: Any = None) -> Any:
            try:
                addresses = resolve(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            allowed = [a for a in addresses if allow_private or is_public_address(a)]
            if not allowed:
                raise UnsafeAddress(f"{host} resolves to non-public addresses {addresses}")
            error: Exception | None = None
            for address in allowed:
                try:
                    return super().connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                               socket_options=socket_options)
                except httpcore.ConnectError as exc:
                    error = exc
            assert error is not None
            raise error

    transport = httpx.HTTPTransport()
    transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                              network_backend=GuardedBackend())
    return httpx.Client(transport=transport, timeout=settings.webhook_timeout_s, follow_redirects=False,
                        headers={"User-Agent": "DeepOpt-Webhook/1"})


def build_body(job: Job, delivery: WebhookDelivery, attempt: int, settings: Settings) -> tuple[str, bytes]:
    from app.services.views import job_view, relative_download_url

    base = (settings.public_url or "").rstrip("/")
    event = f"job.{job.status}"
    payload = {
        "event": event, "delivery_id": delivery.id, "attempt": attempt, "sent_at": utcnow().isoformat(),
        "job": job_view(job, lambda artifact_id: base + relative_download_url(artifact_id)).model_dump(mode="json"),
    }
    return event, json.dumps(payload, separators=(",", ":")).encode()


def _claim_due(session: Session, now: Any, lease_s: float, job_id: str | None, limit: int) -> list[tuple[str, int]]:
    query = (
        select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.next_attempt_at)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
               Job.status.in_(TERMINAL_STATUSES))
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    claimed = []
    for delivery_id, attempts, due in session.execute(query).all():
        taken = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                   WebhookDelivery.attempts == attempts, WebhookDelivery.next_attempt_at == due)
            .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=lease_s))
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            claimed.append((delivery_id, attempts + 1))
    return claimed


def deliver_due(job_id: str | None = None, limit: int = 20) -> int:
    """Send the deliveries that are due (of one job, or any); returns how many were attempted."""
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        claimed = _claim_due(session, now, settings.webhook_timeout_s + 30, job_id, limit)
    if not claimed:
        return 0
    with _guarded_client(settings) as client:
        for delivery_id, attempt in claimed:
            _send(client, delivery_id, attempt, settings)
    return len(claimed)


def _send(client: Any, delivery_id: str, attempt: int, settings: Settings) -> None:
    import httpx

    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return
        job = session.get(Job, delivery.job_id)
        if job is None:
            return
        secret, _ = secret_for(session, delivery.tenant, settings)
        event, body = build_body(job, delivery, attempt, settings)
        url = delivery.url
    status_code: int | None = None
    error: str | None = None
    headers = {"Content-Type": "application/json", "X-DeepOpt-Event": event, "X-DeepOpt-Delivery": delivery_id,
               SIGNATURE_HEADER: sign(secret, body)}
    try:
        # A URL that was fine at submit time may not be any more (the operator's setting, or its DNS).
        refused = check_callback_url(url, settings.webhook_allow_private)
        if refused:
            raise UnsafeAddress(refused)
        with client.stream("POST", url, content=body, headers=headers) as response:
            status_code = response.status_code  # the body is never read
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
    except UnsafeAddress as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    except Exception as exc:  # keep the loop alive whatever a receiver does
        log.exception("webhook %s: unexpected error", delivery_id)
        error = f"{type(exc).__name__}: {exc}"[:1000]
    now = utcnow()
    values: dict[str, Any] = {"last_status_code": status_code, "last_error": error, "event": event}
    if error is None:
        values.update(status="delivered", delivered_at=now)
    elif attempt >= settings.webhook_max_attempts:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=backoff_s(attempt, settings)))
    with session_scope() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                      WebhookDelivery.attempts == attempt).values(**values))
    log.info("webhook %s (%s) attempt %d to %s: %s", delivery_id, event, attempt, url, error or status_code)


def webhook_loop(stop: Any) -> None:
    """Workers: send due deliveries every `webhook_interval_s` until `stop` is set."""
    interval = get_settings().webhook_interval_s
    while not stop.wait(interval):
        try:
            while deliver_due() and not stop.is_set():
                pass
        except Exception:
            log.exception("webhook pass failed; retrying")
