"""Property-based fuzzing of the whole API from its OpenAPI schema: nothing answers 5xx.

schemathesis generates requests (valid and invalid bodies, parameters, headers) for every
operation in ``/openapi.json`` and sends them to the ASGI app in-process, on a real SQLite
database with a fake job queue, with a valid bearer key so that requests get past
authentication. Bounded: a fixed number of examples per operation, no deadline, the same
examples every run (a failure reproduces).

Driven with Hypothesis directly rather than schemathesis' pytest plugin, whose fixture
loader does not work with this pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from api_support import UnitApi, bearer, unit_api
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = 30  # per operation and mode: about 10 s in all


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        # One real job, so that the job routes see an id that exists as well as random ones.
        api.post_job(["a text", "another"])
        yield api


def test_no_generated_request_gets_a_server_error(api: UnitApi) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 8, "every documented route is fuzzed"
    auth = bearer(api.key)
    server_errors: list[str] = []
    unsatisfiable: list[str] = []

    for operation, mode in product(operations, GenerationMode):
        # Positive: requests the schema allows; negative: requests it forbids.

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            try:
                response = case.call(headers={**(case.headers or {}), **auth})
            except Exception as exc:  # the in-process client re-raises what became a 500
                server_errors.append(f"{case.method} {case.formatted_path} -> {exc!r}")
                return
            # /readyz answers 503 by design for a model with no worker ("not ready").
            expected = case.formatted_path == "/readyz" and response.status_code == 503
            if response.status_code >= 500 and not expected:
                server_errors.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}\n  {case.as_curl_command()}"
                )

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing to break: an operation with no parameters has no negative requests.
            assert mode == GenerationMode.NEGATIVE
            unsatisfiable.append(f"{operation.method} {operation.path}")
    assert server_errors == []
    assert len(unsatisfiable) < len(operations) / 2, unsatisfiable
