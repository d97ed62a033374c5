"""Prometheus metrics of the worker (exposed on /metrics by worker.http)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS_IN = Counter("streamrec_events_in_total", "Input records consumed", ["topic"])
EVENTS_INVALID = Counter("streamrec_events_invalid_total", "Records sent to the dead-letter topic", ["stage"])
EVENTS_APPLIED = Counter("streamrec_events_applied_total", "Valid events newly applied to user history")
EVENTS_DUPLICATE = Counter("streamrec_events_duplicate_total", "Valid events skipped as already applied (redelivery)")
RECS_OUT = Counter("streamrec_recommendations_out_total", "Recommendation records published")
OOV_ITEMS = Counter("streamrec_oov_items_total", "Events whose item id is not in the model vocabulary")
USERS_WITHOUT_HISTORY = Counter(
    "streamrec_users_without_history_total", "Users with no stored history when their events arrived (new or rebuilt)"
)
CACHE_LOOKUPS = Counter("streamrec_embedding_cache_lookups_total", "Hot-user embedding cache lookups", ["result"])
CACHE_WRITE_ERRORS = Counter("streamrec_embedding_cache_write_errors_total", "Failed embedding cache writes")
BATCH_SIZE = Histogram("streamrec_batch_events", "Events per micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
BATCH_USERS = Histogram("streamrec_batch_users", "Distinct users per micro-batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
E2E_LATENCY = Histogram("streamrec_end_to_end_latency_seconds", "Newest event ts to publish ack, per recommendation",
                        buckets=_LAT_BUCKETS)
STAGE_LATENCY = Histogram("streamrec_stage_latency_seconds", "Per-stage latency of a batch", ["stage"],
                          buckets=_LAT_BUCKETS)
BATCH_RETRIES = Counter("streamrec_batch_retries_total", "Batches retried after a transient failure", ["cause"])
CONSUMER_LAG = Gauge("streamrec_consumer_lag", "High watermark minus position", ["topic", "partition"])
BUFFERED = Gauge("streamrec_buffered_events", "Events fetched but not yet processed")
PAUSED = Gauge("streamrec_partitions_paused", "1 while fetching is paused for backpressure")
READY = Gauge("streamrec_ready", "1 when the worker is ready (joined, Redis and Kafka reachable)")
BACKEND = Gauge("streamrec_backend_info", "Backend in use", ["component", "backend"])
MODEL_INFO = Gauge("streamrec_model_info", "Model loaded", ["version"])
DEVICE_MEMORY = Gauge("streamrec_device_memory_bytes", "Device memory allocated by torch (CUDA only)")
REBALANCES = Counter("streamrec_rebalances_total", "Partition revocations and assignments", ["kind"])


class _EncoderStates:
    """Exports the live counters of the model's encoder states (pipeline/hot_states.py) at scrape time."""

    hot = None  # the HotStates of the running engine, or None when incremental encoding is off

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        hot = self.hot
        if hot is None:
            return
        s = hot.stats
        lookups = CounterMetricFamily("streamrec_encoder_state_lookups", "Encoder-state lookups per user and "
                                      "batch: reuse (nothing new), hit (decode), miss, stale, window_moved", labels=["result"])
        for result in ("reuse", "hit", "miss", "stale", "window_moved"):
            lookups.add_metric([result], s.lookups.get(result, 0))
        yield lookups
        reprefills = CounterMetricFamily("streamrec_encoder_state_reprefills", "States rebuilt from scratch",
                                         labels=["reason"])
        for reason in ("stale", "window_moved"):
            reprefills.add_metric([reason], s.reprefills.get(reason, 0))
        yield reprefills
        events = CounterMetricFamily("streamrec_encoder_state_events", "Events encoded, by mode", labels=["mode"])
        events.add_metric(["decode"], s.events_decoded)
        events.add_metric(["prefill"], s.events_prefilled)
        yield events
        yield CounterMetricFamily("streamrec_encoder_state_evictions", "States evicted for a hotter user",
                                  value=s.evictions)
        yield CounterMetricFamily("streamrec_encoder_state_rejections", "Users encoded without keeping a state "
                                  "(not hot enough, or no room)", value=s.rejections)
        yield GaugeMetricFamily("streamrec_encoder_state_bytes", "Arena bytes holding states", value=hot.bytes_in_use)
        yield GaugeMetricFamily("streamrec_encoder_state_budget_bytes", "Arena size (the budget)",
                                value=hot.arena.num_pages * hot.arena.page_bytes)
        yield GaugeMetricFamily("streamrec_encoder_state_users", "Users holding a state", value=len(hot.states))


HOT_STATES = _EncoderStates()
REGISTRY.register(HOT_STATES)
