"""OpenTelemetry export of gateway decisions, with the SDK's in-memory reader and exporter."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mas.audit.record import AuditDraft
from mas.config import TelemetryConfig
from mas.errors import ConfigError
from mas.telemetry import Telemetry, from_config


def test_decisions_become_counters_histograms_and_spans() -> None:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = Telemetry(
        TelemetryConfig(enabled=True, service_name="svc"),
        metric_readers=[reader],
        span_processors=[SimpleSpanProcessor(spans)],
    )
    for decision, latency in (("ALLOWED", 0.4), ("ALLOWED", 0.6), ("DLP_BLOCKED", 2.0)):
        telemetry.record(
            AuditDraft(
                time=1.0, decision=decision, latency_ms=latency, sender_id="a", target_id="b"
            )  # type: ignore[arg-type]
        )
    data = reader.get_metrics_data()
    assert data is not None
    [resource_metrics] = data.resource_metrics
    assert resource_metrics.resource.attributes["service.name"] == "svc"
    metrics = {m.name: m for scope in resource_metrics.scope_metrics for m in scope.metrics}
    counts = {
        point.attributes["decision"]: point.value
        for point in metrics["mas.gateway.decisions"].data.data_points
    }
    assert counts == {"ALLOWED": 2, "DLP_BLOCKED": 1}
    histogram = {
        point.attributes["decision"]: point.count
        for point in metrics["mas.gateway.latency"].data.data_points
    }
    assert histogram == {"ALLOWED": 2, "DLP_BLOCKED": 1}
    names = [span.name for span in spans.get_finished_spans()]
    assert names == ["mas.gateway.allowed", "mas.gateway.allowed", "mas.gateway.dlp_blocked"]
    telemetry.shutdown()


def test_disabled_telemetry_builds_nothing() -> None:
    assert from_config(TelemetryConfig()) is None


def test_missing_sdk_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)
    with pytest.raises(ConfigError, match=r"pip install 'mas\[otel\]'"):
        from_config(TelemetryConfig(enabled=True))
