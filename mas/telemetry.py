"""OpenTelemetry export of gateway decisions (optional: ``pip install 'mas[otel]'``).

Off by default. With ``gateway.telemetry.enabled``, every audited decision adds
to a counter ``mas.gateway.decisions`` and a histogram ``mas.gateway.latency``
(milliseconds), both with a ``decision`` attribute, and starts a span
``mas.gateway.<decision lower-case>`` (sampled at ``sample_ratio``) carrying the
message id, sender, target and type. Metrics are exported over OTLP/HTTP to
``otlp_endpoint`` every ``metrics_export_interval_ms`` when ``export_metrics`` is
on; spans go to the same endpoint. The resource names ``service_name``,
``service_namespace`` and ``deployment.environment``.

Without the optional packages, enabling telemetry is a configuration error
that says what to install; nothing in the message path imports them otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from .audit.record import AuditDraft
from .config import TelemetryConfig
from .errors import ConfigError

log = logging.getLogger("mas.telemetry")


def require_otel() -> None:
    """Raise ``ConfigError`` naming the ``otel`` extra unless the OpenTelemetry SDK imports."""
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk.metrics
        import opentelemetry.sdk.trace  # noqa: F401 - imported only to see that it is there
    except ImportError as exc:
        raise ConfigError(
            "gateway.telemetry.enabled needs the OpenTelemetry SDK: "
            "pip install 'mas[otel]' (or set enabled: false)"
        ) from exc


class Telemetry:
    """Records decisions as OpenTelemetry metrics and spans."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        metric_readers: list[Any] | None = None,
        span_processors: list[Any] | None = None,
    ) -> None:
        """Build the providers; ``metric_readers``/``span_processors`` replace OTLP (tests)."""
        require_otel()
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.namespace": config.service_namespace,
                "deployment.environment": config.environment,
            }
        )
        readers = metric_readers if metric_readers is not None else self._otlp_readers(config)
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self._tracer_provider = TracerProvider(
            resource=resource, sampler=TraceIdRatioBased(config.sample_ratio)
        )
        processors = span_processors if span_processors is not None else self._otlp_spans(config)
        for processor in processors:
            self._tracer_provider.add_span_processor(processor)
        meter = self._meter_provider.get_meter("mas.gateway")
        self._decisions = meter.create_counter(
            "mas.gateway.decisions", unit="1", description="gateway decisions by kind"
        )
        self._latency = meter.create_histogram(
            "mas.gateway.latency", unit="ms", description="time from arrival to decision"
        )
        self._tracer = self._tracer_provider.get_tracer("mas.gateway")

    @staticmethod
    def _otlp_readers(config: TelemetryConfig) -> list[Any]:
        if not (config.export_metrics and config.otlp_endpoint):
            return []
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        exporter = OTLPMetricExporter(
            endpoint=config.otlp_endpoint.rstrip("/") + "/v1/metrics", headers=config.headers
        )
        return [
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=config.metrics_export_interval_ms
            )
        ]

    @staticmethod
    def _otlp_spans(config: TelemetryConfig) -> list[Any]:
        if not config.otlp_endpoint:
            return []
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = OTLPSpanExporter(
            endpoint=config.otlp_endpoint.rstrip("/") + "/v1/traces", headers=config.headers
        )
        return [BatchSpanProcessor(exporter)]

    def record(self, draft: AuditDraft) -> None:
        """Count one decision, observe its latency, and emit its span."""
        attributes = {"decision": draft.decision}
        self._decisions.add(1, attributes)
        self._latency.record(draft.latency_ms, attributes)
        span = self._tracer.start_span(
            f"mas.gateway.{draft.decision.lower()}",
            attributes={
                "mas.decision": draft.decision,
                "mas.reason": draft.reason,
                "mas.message_id": draft.message_id,
                "mas.sender_id": draft.sender_id,
                "mas.target_id": draft.target_id,
                "mas.message_type": draft.message_type,
            },
        )
        span.end()

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call from a worker thread)."""
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown()


def from_config(config: TelemetryConfig) -> Telemetry | None:
    """The telemetry ``config`` asks for, or None when it is disabled."""
    if not config.enabled:
        return None
    telemetry = Telemetry(config)
    log.info("OpenTelemetry export to %s", config.otlp_endpoint or "(no endpoint: not exported)")
    return telemetry
