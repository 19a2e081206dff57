"""RFC 9457 problem details for every error the API returns (`application/problem+json`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from deepopt_core.specs import PASS_TAGS

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldProblem(BaseModel):
    field: str = Field(..., description="Dotted location of the offending field, e.g. `passes.0.sparsity`.")
    message: str
    pointer: str | None = Field(None, description="JSON pointer into the request body, when in the body.")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str | None = Field(None, description="Stable machine-readable error name.")
    errors: list[FieldProblem] = Field(default_factory=list)


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.errors = errors or []
        self.headers = headers


def field_error(status: int, field: str, message: str, code: str = "invalid_field") -> ProblemError:
    return ProblemError(status, f"{field}: {message}", code=code, errors=[FieldProblem(field=field, message=message)])


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    code: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = Problem(
        type=f"https://deepopt.dev/problems/{code}" if code else "about:blank",
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        code=code,
        errors=errors or [],
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str | None]:
    parts = [p for p in loc if not (isinstance(p, str) and p in PASS_TAGS)]
    in_body = bool(parts) and parts[0] == "body"
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    field = ".".join(str(p) for p in parts) or "body"
    pointer = "#/" + "/".join(str(p) for p in parts) if in_body else None
    return field, pointer


def allowed_methods(request: Request) -> str:
    """The `Allow` of a 405: the methods of every route on this path (Starlette names only the first route's,
    so `GET /v1/models` and `POST /v1/models` would each hide the other)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request, exc.status, exc.detail, code=exc.code, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            field, pointer = _loc_to_field(err.get("loc", ()))
            errors.append(FieldProblem(field=field, message=err.get("msg", "invalid"), pointer=pointer))
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(request, 422, detail, code="validation_error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return problem_response(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(SQLAlchemyTimeoutError)
    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Every pooled connection busy for the pool's timeout, or the database restarting or unreachable: the
        # service is overloaded or unavailable for a moment, which a client should retry, not a bug (500).
        import logging

        logging.getLogger("deepopt.api").warning("database unavailable on %s: %s", request.url.path,
                                                 str(exc).splitlines()[0][:300])
        return problem_response(request, 503, "the database is busy or unavailable; retry shortly",
                                code="database_unavailable", headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("deepopt.api").exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "internal error", code="internal_error")
