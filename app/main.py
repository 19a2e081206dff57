"""The FastAPI application: middleware, error handlers and routers; nothing else."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app.api.metrics import metrics_middleware
from app.api.problems import install_problem_handlers
from app.api.routes import admin, artifacts, datasets, health, jobs, models, reports
from app.core.config import get_settings

log = logging.getLogger("deepopt.api")


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="DeepOpt",
        version="1.0.0",
        description="Model optimization as a service: upload a model, submit a pipeline of passes "
        "(quantize, prune, export, ...), download optimized models with side-by-side benchmarks.",
    )
    app.middleware("http")(metrics_middleware)
    install_problem_handlers(app)
    for module in (models, datasets, jobs, artifacts, reports, admin, health):
        app.include_router(module.router)
    if not settings.tenant_keys() and not settings.admin_key:
        log.warning("DEEPOPT_API_KEYS is not set: unless keys were issued (python -m app.keys create), the API "
                    "is open, as one local tenant")
    return app


app = create_app()
