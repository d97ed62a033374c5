"""OpenTelemetry tracing (DESIGN §6): producer contexts in, one CONSUMER span per batch, context out.

An OTLP gRPC exporter is installed only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise spans
are created (so links and propagation work) but not exported.
"""

from __future__ import annotations

import os
import random
from typing import Iterable, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link

MAX_LINKS = 1024
TRACER_NAME = "streamrec.worker"


def setup_tracing(service_name: str = "streamrec-worker", exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the global tracer provider (once per process)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        span_limits=SpanLimits(max_links=MAX_LINKS),
    )
    if exporter is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def _headers_to_carrier(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for k, v in headers or ():
        if k in ("traceparent", "tracestate") and v is not None:
            try:
                carrier[k] = v.decode("ascii")
            except UnicodeDecodeError:
                pass
    return carrier


def links_from_headers(all_headers: Iterable[Sequence[tuple[str, bytes]] | None]) -> list[Link]:
    """One link per input record that carries a valid producer context (sampled down to MAX_LINKS)."""
    links = []
    for headers in all_headers:
        carrier = _headers_to_carrier(headers)
        if not carrier:
            continue
        ctx = trace.get_current_span(extract(carrier, context=Context())).get_span_context()
        if ctx.is_valid:
            links.append(Link(ctx))
    if len(links) > MAX_LINKS:
        links = random.sample(links, MAX_LINKS)
    return links


def context_headers() -> list[tuple[str, bytes]]:
    """W3C trace context of the current span as Kafka headers."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return [(k, v.encode("ascii")) for k, v in carrier.items()]
