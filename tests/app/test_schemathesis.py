"""Property-based tests of the whole API against its own `/openapi.json` (schemathesis): every operation, with
generated valid and invalid requests, authenticated with an API key. No 5xx, and every answer (problem bodies
included) matches the declared status codes, media types and schemas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from app.services.keys import RATE_LIMITER
from tests.app.conftest import build_tiny_onnx
from tests.conftest import reset_app_caches

API_KEY = "schemathesis-key"
ADMIN_KEY = "schemathesis-admin"

# The spec as the app serves it at /openapi.json (the app under test below serves the same routes).
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    """One app for every operation, on a fresh SQLite store, with a tenant key and one real model in it."""
    from fastapi.testclient import TestClient

    from app.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("schemathesis")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPOPT_DATA_DIR", str(tmp / "data"))
        for name in ("DEEPOPT_DATABASE_URL", "DEEPOPT_BROKER_URL"):
            env.delenv(name, raising=False)
        env.setenv("DEEPOPT_API_KEYS", f"acme:{API_KEY}")
        env.setenv("DEEPOPT_ADMIN_KEY", ADMIN_KEY)
        reset_app_caches()
        upgrade()
        app = create_app()
        with TestClient(app) as client:
            # A real model, so that generated requests can also get past the 404s.
            model = build_tiny_onnx(tmp / "tiny.onnx").read_bytes()
            response = client.post("/v1/models", files={"file": ("tiny.onnx", model)},
                                   headers={"Authorization": f"Bearer {API_KEY}"})
            assert response.status_code == 201, response.text
        yield app, response.json()["id"]
        reset_app_caches()


# `positive_data_acceptance` expects a 2xx for any request the schema allows; this API rightly answers some of them
# with a 422 the schema cannot express: upload contents (an .npz whose arrays are wrong), opaque pagination
# cursors, references to ids that do not exist or do not fit together. Every other check runs.
EXCLUDED = [positive_data_acceptance]


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_spec(case: schemathesis.Case, api: tuple[FastAPI, str]) -> None:
    RATE_LIMITER._buckets.clear()
    key = ADMIN_KEY if case.path.startswith("/v1/admin") else API_KEY
    case.call_and_validate(app=api[0], headers={"Authorization": f"Bearer {key}"}, excluded_checks=EXCLUDED)


@given(data=st.data())
@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_job_submissions_on_a_real_model_conform(data: st.DataObject, api: tuple[FastAPI, str]) -> None:
    """Schema-valid job bodies on the real model, so that pass specs get past the 404 of an unknown model into
    the validation against the model's facts: 202 or a 4xx problem, never a 5xx."""
    app, model_id = api
    case = data.draw(schema["/v1/jobs"]["POST"].as_strategy())
    case.body["model_id"] = model_id
    case.body.pop("eval_dataset_id", None)
    RATE_LIMITER._buckets.clear()
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {API_KEY}"}, excluded_checks=EXCLUDED)
