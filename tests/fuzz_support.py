"""Property-based fuzzing of the API from its OpenAPI schema: what answers 5xx.

schemathesis generates requests (valid and invalid bodies, path and query parameters,
headers) for every operation in ``/openapi.json``; :func:`server_errors` sends them with a
valid bearer key, so that requests get past authentication, and lists every answer of 500
or more. Bounded: a fixed number of examples per operation and mode, no deadline, the same
examples every run (a failure reproduces). Every error answer is checked for the one error
shape, RFC 9457 problem details with a ``code`` (``FuzzReport.not_problems``).

Generated path parameters are random strings, which name nothing: a route would answer 404
before it reads a single query parameter. So half of the examples have their path
parameters replaced by names that exist (a real job's id, a registered model), and the
query parameters and bodies generated for them reach the code that uses them.

Driven with Hypothesis directly rather than schemathesis' pytest plugin, whose fixture
loader does not work with this pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = 30  # per operation and mode


@dataclass
class FuzzReport:
    """What a fuzzing run saw."""

    operations: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)
    # (operation, parameter) of every path parameter that was sent with a real value.
    real_paths: set[tuple[str, str]] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    # Error answers (4xx/5xx) that are not problem details (api.problems).
    not_problems: list[str] = field(default_factory=list)
    # Stable codes seen in error answers, with how often.
    codes: dict[str, int] = field(default_factory=dict)


def server_errors(
    schema: Any,
    auth: Mapping[str, str],
    existing: Mapping[str, Sequence[str]],
    examples: int = EXAMPLES_PER_OPERATION,
    base_url: str | None = None,
) -> FuzzReport:
    """Fuzz every operation of ``schema`` in positive and negative mode.

    Args:
        schema: A schemathesis schema (``from_asgi`` in-process, ``from_url`` over HTTP).
        auth: Headers that authenticate (a bearer key); they replace any generated ones.
        existing: Values that exist, by path parameter name (``{"job_id": [an id]}``).
        examples: Examples per operation and mode.
        base_url: Where to send requests (for a schema loaded from a URL).

    Returns:
        The report; ``server_errors`` lists each 5xx with a curl command to reproduce it.
    """
    report = FuzzReport()
    operations = [result.ok() for result in schema.get_all_operations()]
    report.operations = [_label(op) for op in operations]
    for operation, mode in product(operations, GenerationMode):
        # Positive: requests the schema allows; negative: requests it forbids.
        try:
            _fuzz_operation(operation, mode, report, auth, existing, examples, base_url)
        except Unsatisfiable:
            # Nothing to break: an operation with no parameters has no negative requests.
            if mode != GenerationMode.NEGATIVE:
                raise
            report.unsatisfiable.append(_label(operation))
    return report


def _label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    report: FuzzReport,
    auth: Mapping[str, str],
    existing: Mapping[str, Sequence[str]],
    examples: int,
    base_url: str | None,
) -> None:
    label = _label(operation)
    ours = {name.lower() for name in auth}

    @given(
        case=operation.as_strategy(generation_mode=mode),
        use_existing=st.booleans(),
        pick=st.integers(min_value=0, max_value=1000),
    )
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any, use_existing: bool, pick: int) -> None:
        if use_existing:
            for name in case.path_parameters or {}:
                values = existing.get(name)
                if values:
                    case.path_parameters[name] = values[pick % len(values)]
                    report.real_paths.add((label, name))
        # Negative mode may generate an Authorization header of its own (in another case);
        # sent beside ours, it would make most requests a 401 that tests nothing.
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ours}
        try:
            response = case.call(base_url=base_url, headers={**headers, **auth})
        except Exception as exc:  # the in-process client re-raises what became a 500
            report.server_errors.append(f"{case.method} {case.formatted_path} -> {exc!r}")
            return
        status = response.status_code
        report.statuses[status] = report.statuses.get(status, 0) + 1
        # /readyz answers 503 by design for a model with no worker ("not ready").
        expected = case.formatted_path == "/readyz" and status == 503
        if status >= 400 and not expected:
            _check_problem(case, response, report)
        if status >= 500 and not expected:
            report.server_errors.append(
                f"{case.method} {case.formatted_path} -> {status}: "
                f"{response.text[:300]}\n  {case.as_curl_command()}"
            )

    fuzz()


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


def _check_problem(case: Any, response: Any, report: FuzzReport) -> None:
    """Record ``response`` in ``report.not_problems`` unless it is problem details."""
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    # schemathesis' responses list each header's values.
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/problem+json"):
        report.not_problems.append(f"{where}: {content_type}")
        return
    body = response.json()
    if not isinstance(body, dict) or not set(body) >= PROBLEM_MEMBERS:
        report.not_problems.append(f"{where}: {response.text[:200]}")
        return
    if body["status"] != response.status_code or body["type"] != f"/problems/{body['code']}":
        report.not_problems.append(f"{where}: {response.text[:200]}")
    report.codes[body["code"]] = report.codes.get(body["code"], 0) + 1
