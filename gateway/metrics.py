"""Every Prometheus metric of the gateway, defined here and nowhere else.

The engine reports through ``engine.events.EngineEvents`` and the gateway's
admission and generation code call the ``record_*`` functions; neither the
engine nor the policies import prometheus-client.  Labels are bounded: model
id, key id (never a secret), route, status, reason, result.  Units are in the
names.  ``docs/metrics.md`` documents each one; a test keeps the two equal.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds for whole requests and first tokens: from tens of milliseconds to minutes.
LLM_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
# Seconds between tokens: a fast GPU to a slow CPU.
TOKEN_SECONDS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
LOAD_SECONDS = (0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)

requests_total = Counter(
    "gateway_requests_total",
    "Requests answered, by route, model, key and HTTP status.",
    ["route", "model", "key", "status"],
    registry=REGISTRY,
)
request_duration_seconds = Histogram(
    "gateway_request_duration_seconds",
    "Time from admission to the response's last byte.",
    ["route", "model"],
    buckets=LLM_SECONDS,
    registry=REGISTRY,
)
time_to_first_token_seconds = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time from admission to the first generated text.",
    ["model"],
    buckets=LLM_SECONDS,
    registry=REGISTRY,
)
inter_token_latency_seconds = Histogram(
    "gateway_inter_token_latency_seconds",
    "Mean time between generated tokens of a response, observed once per response.",
    ["model"],
    buckets=TOKEN_SECONDS,
    registry=REGISTRY,
)
prompt_tokens_total = Counter(
    "gateway_prompt_tokens_total",
    "Prompt tokens processed, by model and key.",
    ["model", "key"],
    registry=REGISTRY,
)
completion_tokens_total = Counter(
    "gateway_completion_tokens_total",
    "Tokens generated, by model and key.",
    ["model", "key"],
    registry=REGISTRY,
)
policy_denials_total = Counter(
    "gateway_policy_denials_total",
    "Requests refused by policy or authentication, by reason (the error code).",
    ["reason"],
    registry=REGISTRY,
)
model_loads_total = Counter(
    "gateway_model_loads_total",
    "Model loads, by model and result (ok, failed).",
    ["model", "result"],
    registry=REGISTRY,
)
model_load_duration_seconds = Histogram(
    "gateway_model_load_duration_seconds",
    "Time a model took to load in its worker.",
    ["model"],
    buckets=LOAD_SECONDS,
    registry=REGISTRY,
)
model_unloads_total = Counter(
    "gateway_model_unloads_total",
    "Models unloaded (worker stopped), by model.",
    ["model"],
    registry=REGISTRY,
)
model_evictions_total = Counter(
    "gateway_model_evictions_total",
    "Models evicted to make room for another, by model and kind (idle, busy).",
    ["model", "kind"],
    registry=REGISTRY,
)
model_swaps_total = Counter(
    "gateway_model_swaps_total",
    "Loads that needed another model evicted first.",
    ["model"],
    registry=REGISTRY,
)
drain_duration_seconds = Histogram(
    "gateway_drain_duration_seconds",
    "Time a model spent draining before its unload.",
    ["model"],
    buckets=LOAD_SECONDS,
    registry=REGISTRY,
)
drain_cancelled_requests_total = Counter(
    "gateway_drain_cancelled_requests_total",
    "In-flight requests cancelled because a drain ran past drain_timeout.",
    ["model"],
    registry=REGISTRY,
)
deadline_missed_total = Counter(
    "gateway_deadline_missed_total",
    "States resolved by the watchdog past their deadline, by model and state.",
    ["model", "state"],
    registry=REGISTRY,
)
models_loaded = Gauge(
    "gateway_models_loaded",
    "Models holding memory (loading, ready, draining or unloading).",
    registry=REGISTRY,
)
model_memory_bytes = Gauge(
    "gateway_model_memory_bytes",
    "Resident memory a loaded model's worker reported (0 when not loaded).",
    ["model"],
    registry=REGISTRY,
)
memory_budget_bytes = Gauge(
    "gateway_memory_budget_bytes", "The memory budget for loaded models.", registry=REGISTRY
)
memory_used_bytes = Gauge(
    "gateway_memory_used_bytes",
    "The estimated need of every model holding memory.",
    registry=REGISTRY,
)
disk_budget_bytes = Gauge(
    "gateway_disk_budget_bytes", "The disk budget for downloaded models.", registry=REGISTRY
)
disk_used_bytes = Gauge(
    "gateway_disk_used_bytes",
    "Bytes the download cache uses (measured in the background every few seconds).",
    registry=REGISTRY,
)
disk_scan_duration_seconds = Histogram(
    "gateway_disk_scan_duration_seconds",
    "Time one walk of the download cache took (the background refresh of the disk gauges).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
connections_open = Gauge(
    "gateway_connections_open", "Client connections open now.", registry=REGISTRY
)
connections_max = Gauge(
    "gateway_connections_max",
    "Client connections served at once; more are answered 503 (server.max_connections).",
    registry=REGISTRY,
)
connections_closed_total = Counter(
    "gateway_connections_closed_total",
    "Connections the server closed, by reason (header_timeout, body_timeout, over_capacity).",
    ["reason"],
    registry=REGISTRY,
)
download_bytes_total = Counter(
    "gateway_download_bytes_total",
    "Bytes downloaded from the hub, by the key that caused the download.",
    ["key"],
    registry=REGISTRY,
)
queue_depth = Gauge(
    "gateway_queue_depth",
    "Requests waiting for a model (loading, swapping or saturated).",
    ["model"],
    registry=REGISTRY,
)
queue_wait_seconds = Histogram(
    "gateway_queue_wait_seconds",
    "Time a request waited for its model before it ran (or gave up).",
    ["model"],
    buckets=LLM_SECONDS,
    registry=REGISTRY,
)
in_flight_requests = Gauge(
    "gateway_in_flight_requests",
    "Requests generating on a model now.",
    ["model"],
    registry=REGISTRY,
)
decode_batch_size = Gauge(
    "gateway_decode_batch_size",
    "Generations decoding on a model now (one batch when it decodes batched).",
    ["model"],
    registry=REGISTRY,
)
prefill_queue = Gauge(
    "gateway_prefill_queue",
    "Generations on a model whose prompt is being prefilled, or waiting to start.",
    ["model"],
    registry=REGISTRY,
)
kv_budget_tokens = Gauge(
    "gateway_kv_budget_tokens",
    "Tokens of KV cache a model's running requests may reserve together.",
    ["model"],
    registry=REGISTRY,
)
kv_reserved_tokens = Gauge(
    "gateway_kv_reserved_tokens",
    "Tokens of KV cache a model's running requests reserved (prompt plus max_tokens).",
    ["model"],
    registry=REGISTRY,
)
kv_used_bytes = Gauge(
    "gateway_kv_used_bytes",
    "Bytes of KV cache a model's running generations hold, as its worker reported.",
    ["model"],
    registry=REGISTRY,
)
decode_pause_seconds = Gauge(
    "gateway_decode_pause_longest_seconds",
    "The longest wait between two tokens of a running stream on a model in the last minute.",
    ["model"],
    registry=REGISTRY,
)
decoding_mode = Gauge(
    "gateway_decoding_mode",
    "1 for the way a loaded model decodes concurrent requests (batched or interleaved).",
    ["model", "mode"],
    registry=REGISTRY,
)
worker_crashes_total = Counter(
    "gateway_worker_crashes_total",
    "Worker processes that exited unexpectedly, by model.",
    ["model"],
    registry=REGISTRY,
)
