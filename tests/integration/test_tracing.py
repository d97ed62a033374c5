"""An output record's trace links back to the input's producer span (OpenTelemetry, real Kafka)."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tests.helpers import consume_all, create_topics, event, produce_raw, running_worker, settings_for, wait_committed
from worker.telemetry import context_headers

pytestmark = pytest.mark.integration


async def test_output_trace_links_to_producer_span(services, names, tiny_model_dir, span_exporter):
    await create_topics(services["bootstrap"], names, partitions=1)
    tracer = trace.get_tracer("test-producer")
    with tracer.start_as_current_span("send user-events", kind=SpanKind.PRODUCER) as span:
        producer_ctx = span.get_span_context()
        headers = context_headers()
    ev = event("trace-user", "i0001", 1_732_600_000_000)
    await produce_raw(services["bootstrap"], names["input_topic"], [(b"trace-user", orjson.dumps(ev), headers)])

    async with running_worker(settings_for(services, names, tiny_model_dir)):
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 60)
    out = await consume_all(services["bootstrap"], names["output_topic"], lambda r: len(r) >= 1, 30)
    traceparent = dict(out[0].headers)["traceparent"].decode()
    _, out_trace_id, out_span_id, _ = traceparent.split("-")

    spans = span_exporter.get_finished_spans()
    process = [s for s in spans if s.name == f"process {names['input_topic']}"
               and any(l.context.span_id == producer_ctx.span_id for l in s.links)]
    assert len(process) == 1, "the batch span must link to the producer span"
    p = process[0]
    assert p.kind == SpanKind.CONSUMER
    assert format(p.context.trace_id, "032x") == out_trace_id  # the output continues the batch's trace
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == p.context.span_id}
    assert {"decode", "history", "model", "cache", "publish", "commit"} <= children
    assert out_span_id in {format(s.context.span_id, "016x") for s in spans if s.context.trace_id == p.context.trace_id}
