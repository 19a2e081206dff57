"""All settings of the service, read once from `DEEPOPT_*` environment variables and validated at start."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of the API and the workers. Defaults give the embedded mode: SQLite, a filesystem broker and
    local files, all under `data_dir`; set `database_url` and `broker_url` to run distributed."""

    model_config = SettingsConfigDict(env_prefix="DEEPOPT_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path(".deepopt"), description="Root of all local state in the embedded mode.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under data_dir.")
    broker_url: str | None = Field(None, description="Celery broker URL; default kombu's filesystem transport.")
    host: str = Field("127.0.0.1", description="Address the API binds (`make run`, `make api`, `deepopt serve`); "
                      "loopback by default because a server with no API keys is open to whoever reaches it.")
    port: int = Field(8000, description="Port the API listens on.")

    max_upload_bytes: int = Field(4 * 1024**3, ge=1, description="Largest model or dataset upload; a larger body "
                                  "is cut off with 413 while it streams, before anything is stored.")
    api_keys: str | None = Field(
        None, description="Comma-separated API keys, each `KEY` or `TENANT:KEY`; unset = open, one tenant."
    )

    admin_key: str | None = Field(None, description="A key that may call the admin API (/v1/admin/...).")
    rate_limit_per_minute: int | None = Field(None, ge=1, description="Requests a minute per key; unset = none.")
    tenant_max_storage_bytes: int | None = Field(None, ge=0, description="Stored bytes per tenant (uploads "
                                                 "and artifacts); unset = no quota.")
    tenant_max_active_jobs: int | None = Field(None, ge=1, description="Queued + running jobs per tenant.")

    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a running job's (or trial's) worker "
                                        "writes its heartbeat; a cancel stops the job within about one interval.")
    stale_after_s: float = Field(30.0, gt=0, description="A running job whose heartbeat is older is reaped "
                                 "(15 heartbeats at the default interval: a loaded machine's late beat reaps nothing).")
    max_attempts: int = Field(3, ge=1, description="Runs of a job before a lost worker fails it.")
    requeue_queued_after_s: float = Field(300.0, gt=0, description="Re-send a queued job's task after this "
                                          "(the filesystem broker loses a killed worker's unacknowledged task).")
    reaper_interval_s: float = Field(5.0, gt=0, description="How often each worker's reaper looks for stale "
                                     "running jobs and long-queued ones.")
    job_timeout_s: float = Field(6 * 3600.0, gt=0, description="Wall-clock limit of one job run; Redis's "
                                 "visibility timeout is this plus an hour, so Redis never redelivers a live job.")
    job_memory_limit_bytes: int | None = Field(
        None, ge=256 * 1024**2, description="Address-space limit of a job's process (RLIMIT_AS); unset = none."
    )
    inspect_timeout_s: float = Field(120.0, gt=0, description="Time limit of inspecting one uploaded model (in "
                                     "a sandboxed child); an upload over it is refused with 422.")
    sandbox: Literal["best_effort", "strict"] = Field(
        "best_effort", description="`strict`: a child that opens uploads refuses to run unless seccomp and Landlock "
        "both hold on this kernel; `best_effort` runs with whatever holds and logs what does not (docs/security.md)."
    )
    queues: str = Field("cpu", description="Queues a worker consumes (comma-separated): cpu, gpu.")

    storage_url: str | None = Field(
        None, description="Where files are kept: unset = `data_dir/blobs`; `s3://bucket/prefix` (or any fsspec URL) "
        "so that API replicas and workers on different machines share them."
    )
    storage_options: str | None = Field(None, description="JSON object of fsspec options for `storage_url`.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph, a test server).")

    events_poll_s: float = Field(0.3, gt=0, description="How often an event stream re-reads its job row.")
    events_keepalive_s: float = Field(15.0, gt=0, description="Comment lines that keep idle event streams open.")

    public_url: str | None = Field(
        None, description="The API's public base URL (e.g. https://deepopt.example.com): webhooks then carry absolute "
        "download URLs; unset = paths."
    )
    webhook_secrets: str | None = Field(
        None, description="Comma-separated `TENANT:SECRET` webhook signing secrets; a tenant not listed gets a "
        "random secret kept in the database (GET /v1/webhooks/secret)."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow callback URLs on loopback, private, link-local and other non-public addresses."
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Deliveries of one webhook before it is given up.")
    webhook_backoff_s: float = Field(5.0, gt=0, description="First retry delay; doubles each attempt, at most 1 h.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time limit of one delivery.")
    webhook_interval_s: float = Field(1.0, gt=0, description="How often workers look for due deliveries.")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'deepopt.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def tenant_webhook_secrets(self) -> dict[str, str]:
        """Map of tenant -> webhook secret from `webhook_secrets`."""
        secrets: dict[str, str] = {}
        for item in (self.webhook_secrets or "").split(","):
            tenant, sep, secret = item.strip().partition(":")
            if sep and tenant and secret:
                secrets[tenant] = secret
        return secrets

    def tenant_keys(self) -> dict[str, str]:
        """Map of API key -> tenant name."""
        keys: dict[str, str] = {}
        for item in (self.api_keys or "").split(","):
            item = item.strip()
            if not item:
                continue
            tenant, _, key = item.rpartition(":")
            keys[key] = tenant or "default"
        return keys


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings
