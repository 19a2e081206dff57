"""The FastAPI application: middleware, error handlers and routers; nothing else."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.api.metrics import MetricsMiddleware
from app.api.problems import Problem, install_problem_handlers
from app.api.routes import admin, artifacts, datasets, events, health, jobs, models, reports, webhooks
from app.core.config import get_settings
from app.core.notify import WAKEUPS
from app.core.reads import dispose_read_engines

log = logging.getLogger("deepopt.api")


def operation_id(route: APIRoute) -> str:
    """OpenAPI operation ids are the route functions' names (`upload_model`, `submit_job`, ...), which become the
    function names of the generated clients."""
    return route.name


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    """The spec, with errors as they really are: every 4xx/5xx is an RFC 9457 problem document, so FastAPI's
    `HTTPValidationError` is replaced by `Problem` (`application/problem+json`) on every operation."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(Problem.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
    schemas["Problem"] = {k: v for k, v in Problem.model_json_schema(
        ref_template="#/components/schemas/{model}").items() if k != "$defs"}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "The request is invalid: a problem naming each field",
                                    "content": problem}
            responses["default"] = {"description": "Any other error: a problem document (RFC 9457)",
                                    "content": problem}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = schema
    return schema


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    await WAKEUPS.close()
    await dispose_read_engines()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="DeepOpt",
        version="1.0.0",
        description="Model optimization as a service: upload a model, submit a pipeline of passes "
        "(quantize, prune, export, ...), download optimized models with side-by-side benchmarks.",
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    app.openapi = lambda: problem_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(MetricsMiddleware)
    install_problem_handlers(app)
    for module in (models, datasets, jobs, events, webhooks, artifacts, reports, admin, health):
        app.include_router(module.router)
    if not settings.tenant_keys() and not settings.admin_key:
        log.warning("DEEPOPT_API_KEYS is not set: unless keys were issued (python -m app.keys create), the API "
                    "is open, as one local tenant")
    return app


# The API's threads mostly wait on the database, and each wait (a SQLite step per row, a PostgreSQL round trip)
# gives up the GIL; with Python's default 5 ms switch interval a thread then waits up to 5 ms to get it back from
# the busy event-loop thread, per row (py-spy on GET /v1/jobs?limit=50 under wrk: 35% of the time in fetchone).
# 0.5 ms took that page from 111 to 205 requests/s and a poll from 613 to 673 on 2 cores (benchmarks/load.py).
sys.setswitchinterval(0.0005)
app = create_app()
