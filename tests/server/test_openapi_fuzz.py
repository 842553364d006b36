"""Schemathesis against the generated OpenAPI schema, on a live server: whatever it sends, never a 5xx.

Driven through Hypothesis directly (one ``given`` per operation) rather than schemathesis's pytest
plugin, whose fixture loader does not run under this pytest version.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

OPERATIONS = ["GET /healthz", "POST /api/v1/predict", "GET /api/v1/model"]


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")


def test_the_schema_lists_every_operation(api_schema):
    assert sorted(result.ok().label for result in api_schema.get_all_operations()) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_request_gets_a_server_error(api_schema, label):
    operation = next(result.ok() for result in api_schema.get_all_operations() if result.ok().label == label)

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
        )

    check()
