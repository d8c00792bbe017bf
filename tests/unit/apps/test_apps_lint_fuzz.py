"""Bad input gets findings, never a crash: lint on arbitrary text and on arbitrary compose-like data."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x8manager.apps.findings import Severity
from x8manager.apps.lint import lint_text
from x8manager.apps.schema import compose_schema

SCHEMA = compose_schema()
KEYS = ["image", "ports", "devices", "environment", "extra_hosts", "expose", "volumes", "cap_add",
        "privileged", "restart", "read_only", "network_mode", "security_opt", "deploy", "build", "pid"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000), st.text(max_size=30),
                    st.sampled_from(["m4-proxy:host-gateway", "m4-proxy:172.17.0.1", "5000-5100:5000-5100",
                                     "/dev/x8h7_ui", "RPC_SERVICE_PORT=5005", "${PORT}:5005", "ALL"]))
values: st.SearchStrategy[Any] = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.sampled_from([*KEYS, "target", "published"]), inner,
                                                     max_size=4)),
    max_leaves=12)
# Service names YAML reads as something else than a string (1, true, null) are findings too.
service_names = st.one_of(st.sampled_from(["app", "m4", "x"]), st.integers(0, 9), st.booleans(), st.none())
services = st.dictionaries(service_names,
                           st.dictionaries(st.sampled_from(KEYS), values, max_size=6), max_size=3)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_gives_findings_not_exceptions(text: str) -> None:
    for finding in lint_text(text, "fuzz.yml", SCHEMA):
        assert finding.line >= 0
        assert finding.message


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services)
def test_any_compose_like_document_gives_findings_not_exceptions(document: dict[str, Any]) -> None:
    text = yaml.safe_dump({"services": document})
    findings = lint_text(text, "fuzz.yml", SCHEMA)
    lines = text.count("\n") + 1
    for finding in findings:
        assert 1 <= finding.line <= lines, finding
        assert isinstance(finding.severity, Severity)
