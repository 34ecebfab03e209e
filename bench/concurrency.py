"""Concurrency benchmark: the gateway vs ``mlx_lm.server`` under concurrent streams, in one run.

Run from the repository root, as a script (it imports its helpers with ``from serving
import ...``, which works because Python puts ``bench/`` first on ``sys.path``)::

    .venv/bin/python bench/concurrency.py [--model-dir DIR] [--clients 1,2,4,8]
        [--max-tokens 48] [--runs 1] [--long-prompt-tokens 1000] [--skip-pause] [--skip-clients]
        [--timeout 600] [--gateway-arg=ARG ...] [--json PATH]

Both servers serve the same model directory; they are started first (one after the
other) and stay up, each gets one unmeasured warm-up request, and only one of them is
measured at any time.  Every request is a streamed chat completion through the
official ``openai`` SDK, greedy (temperature 0), with ``stream_options.include_usage``.

``mlx_lm.server``
    ``python -m mlx_lm server --model DIR`` with its defaults: it batches concurrent
    requests (``--decode-concurrency 32`` decoded together, ``--prompt-concurrency 8``
    prompts prefilled together, ``--prefill-step-size 2048`` tokens per step), but
    only requests without a ``seed``, so the bench sends none.
``gateway``
    ``python -m gateway serve``, authentication off on loopback, plus any
    ``--gateway-arg``.  By default 4 requests generate at once on a model
    (``engine.max_concurrent_per_model``); the others wait in its queue, and that
    wait is part of the figures.  All bench requests are one caller, whose share of
    a model's queue (``engine.queue_per_key``, default 8) would refuse a ninth with
    429, so the bench sets ``GATEWAY_ENGINE_QUEUE_PER_KEY`` to ``max(8, 2 x largest C)``.

Refusals (429/503) are counted, never retried; any other failure stops the bench.

Part 1 (unless ``--skip-clients``), for each C of ``--clients``: C threads send at
the same moment, each its own prompt (``Client k of C, run r: ...``: new to both
servers, the same on both), with ``--max-tokens``.  Which server goes first
alternates with every C and run.

decode tok/s
    The completion tokens of all C clients (usage chunk, else content chunks)
    divided by the time from the earliest first content chunk of any client to the
    latest last content chunk of any client: the first prefill is left out, the
    others are not.  ``gw/mlx`` = gateway / mlx_lm.server: above 1, gateway faster.
    A server that prefills every prompt before it decodes any (and so stalls the
    running streams) keeps all prefills out of this window; one that interleaves
    them with decoding has some inside it.
wall tok/s
    The same tokens divided by the time from the moment the C clients sent their
    requests to the latest last content chunk: the throughput the clients see,
    every prefill included.
TTFT p50 / p95 (s)
    Per client, from sending the request to its first non-empty content chunk
    (queueing included), over the C clients.
gap p50 / p99 (s)
    The time between two consecutive content chunks of a client, over every gap of
    every client.  A chunk usually carries one token.

Part 2, the longest pause (unless ``--skip-pause``): one client streams a long story;
after its 8th content chunk a second client sends a prompt of about
``--long-prompt-tokens`` tokens (distinct numbered sentences; estimated as one token
per word, digit and punctuation mark; the table shows the prompt tokens the server
reported, chat template included) with ``max_tokens`` 1.  The story stream is closed
4 chunks after the long request ends.

longest pause (s)
    The longest gap between consecutive content chunks of the story stream that
    overlaps the window from sending the long prompt to its completion.
median gap (s)
    The story stream's median gap before the long prompt was sent.
target / met
    ``max(0.5 s, 4 x median gap)``; met: the longest pause is within it (per run).
long prompt s
    From sending the long prompt to the end of its response: mostly its prefill.
covered
    The story stream still streamed after the long request ended (if it stopped
    early, the longest pause may be understated).

Percentiles interpolate linearly between ranks; figures are medians over ``--runs``.
``--json PATH`` writes every stream (send time and each content chunk's arrival, in
seconds of the bench's monotonic clock), the summaries and the versions.  Nothing is
asserted: the figures are measurements of this machine at this moment, and other
load on it shows up in them.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from serving import (
    DEFAULT_MODEL_DIR,
    GATEWAY,
    SERVER,
    WARMUP_PROMPT,
    BenchError,
    Endpoint,
    fmt,
    free_port,
    gateway_cmd,
    log_tail,
    make_endpoint,
    median,
    mlx_server_cmd,
    progress,
    ratio,
    run_guarded,
    running_server,
    versions,
)

SYSTEMS = (GATEWAY, SERVER)
REFUSALS = (429, 503)
LEAD_CHUNKS = 8  # chunks of the first stream before the long prompt is sent
TAIL_CHUNKS = 4  # chunks of the first stream after the long prompt is done
TOPICS = ("a lighthouse", "a lost kite", "a desert train", "a clockmaker", "a snowy owl")
COLOURS = ("red", "blue", "green", "yellow", "white")


@dataclass
class Stream:
    """One streamed request: when it was sent, and when each content chunk arrived."""

    system: str
    client: int
    prompt: str
    max_tokens: int
    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)
    done: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    text: str = ""
    status: int | None = None  # HTTP status of a failed request
    error: str | None = None


def client_prompt(client: int, clients: int, run: int) -> str:
    topic = TOPICS[client % len(TOPICS)]
    return f"Client {client + 1} of {clients}, run {run}: tell a short story about {topic}."


def story_prompt(run: int) -> str:
    return (
        f"Run {run}, long answer: write a very long story in many chapters about a "
        "travelling circus crossing a desert. Describe every performer, every animal "
        "and every town on the way in great detail."
    )


def rough_tokens(text: str) -> int:
    """About one token per word, digit and punctuation mark (SmolLM2 splits digits)."""
    return len(text.split()) + sum(not c.isalpha() and not c.isspace() for c in text)


def long_prompt(run: int, tokens: int) -> str:
    """About ``tokens`` tokens of distinct numbered sentences, so no prompt cache helps."""
    parts = [f"Run {run}, long prompt. Read the numbered notes, then answer in one word."]
    i = 0
    while rough_tokens(" ".join(parts)) < tokens:
        i += 1
        parts.append(f"Note {i} says the {COLOURS[i % 5]} crate holds {TOPICS[i % 5]} toys.")
    parts.append("Which note came first?")
    return " ".join(parts)


def stream_timed(
    endpoint: Endpoint,
    record: Stream,
    should_stop: Callable[[Stream], bool] | None = None,
) -> Stream:
    """Stream ``record.prompt`` (no ``seed``: mlx_lm.server batches only without one).

    Fills ``record`` in place; a failure is recorded in it, not raised.
    ``should_stop`` is asked after every content chunk; true closes the stream.
    """
    record.sent = time.perf_counter()
    pieces: list[str] = []
    usage = None
    try:
        stream = endpoint.client.chat.completions.create(
            model=endpoint.model,
            messages=[{"role": "user", "content": record.prompt}],
            max_tokens=record.max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for chunk in stream:
                now = time.perf_counter()
                if chunk.usage is not None:
                    usage = chunk.usage
                content = "".join(c.delta.content or "" for c in chunk.choices if c.delta)
                if content:
                    record.chunks.append(now)
                    pieces.append(content)
                    if should_stop is not None and should_stop(record):
                        break
    except Exception as exc:
        record.status = getattr(exc, "status_code", None)
        record.error = f"{type(exc).__name__}: {exc}"
    record.done = time.perf_counter()
    record.text = "".join(pieces)
    record.completion_tokens = usage.completion_tokens if usage else len(record.chunks)
    record.prompt_tokens = usage.prompt_tokens if usage else None
    return record


def check(endpoint: Endpoint, streams: list[Stream]) -> None:
    """Raise on any failure other than a refusal (429/503), with the server's log."""
    for s in streams:
        if s.error is not None and s.status not in REFUSALS:
            raise BenchError(
                f"{endpoint.name}: client {s.client} failed: {s.error}\n"
                f"--- log tail ({endpoint.log}) ---\n{log_tail(endpoint.log)}"
            )


# --------------------------------------------------------------------------- part 1


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize_clients(streams: list[Stream]) -> dict[str, Any]:
    ok = [s for s in streams if s.error is None and s.chunks]
    tokens = sum(s.completion_tokens for s in ok)
    span = max((s.chunks[-1] for s in ok), default=0.0) - min(
        (s.chunks[0] for s in ok), default=0.0
    )
    ttfts = [s.chunks[0] - s.sent for s in ok]
    gaps = [b - a for s in ok for a, b in pairwise(s.chunks)]
    wall = max((s.chunks[-1] for s in ok), default=0.0) - min((s.sent for s in ok), default=0.0)
    return {
        "aggregate_tps": tokens / span if span > 0 else None,
        "wall_tps": tokens / wall if wall > 0 else None,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "gap_p50_s": percentile(gaps, 50),
        "gap_p99_s": percentile(gaps, 99),
        "completion_tokens": tokens,
        "content_chunks": sum(len(s.chunks) for s in ok),
        "refused": sum(s.status in REFUSALS for s in streams),
    }


def measure_clients(endpoint: Endpoint, clients: int, run: int, max_tokens: int) -> dict[str, Any]:
    """C clients released together by a barrier, each streaming its own prompt."""
    barrier = threading.Barrier(clients)
    streams = [
        Stream(endpoint.name, k, client_prompt(k, clients, run), max_tokens) for k in range(clients)
    ]

    def client(record: Stream) -> None:
        barrier.wait()
        stream_timed(endpoint, record)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check(endpoint, streams)
    summary = summarize_clients(streams)
    progress(
        f"  run {run} C={clients} {endpoint.name:<14} {fmt(summary['aggregate_tps'])} tok/s, "
        f"TTFT p95 {fmt(summary['ttft_p95_s'], 3)} s, gap p99 {fmt(summary['gap_p99_s'], 3)} s"
        + (f", {summary['refused']} refused" if summary["refused"] else "")
    )
    return {
        "system": endpoint.name,
        "clients": clients,
        "run": run,
        "summary": summary,
        "streams": [asdict(s) for s in streams],
    }


# --------------------------------------------------------------------------- part 2


def measure_pause(endpoint: Endpoint, run: int, long_tokens: int, timeout: float) -> dict[str, Any]:
    """A long story streams while a long prompt is prefilled beside it."""
    first = Stream(endpoint.name, 0, story_prompt(run), max(400, 2 * long_tokens))
    long = Stream(endpoint.name, 1, long_prompt(run, long_tokens), 1)
    lead_in = threading.Event()

    def stop_first(s: Stream) -> bool:
        if len(s.chunks) >= LEAD_CHUNKS:
            lead_in.set()
        if long.done is None:
            return False
        return len(s.chunks) - bisect.bisect_right(s.chunks, long.done) >= TAIL_CHUNKS

    def run_first() -> None:
        try:
            stream_timed(endpoint, first, stop_first)
        finally:
            lead_in.set()  # never leave the main thread waiting

    thread = threading.Thread(target=run_first, daemon=True)
    thread.start()
    if not lead_in.wait(timeout) or len(first.chunks) < LEAD_CHUNKS:
        thread.join(timeout)
        check(endpoint, [first])
        raise BenchError(f"{endpoint.name}: the long story stopped before {LEAD_CHUNKS} chunks")
    stream_timed(endpoint, long)
    thread.join()
    check(endpoint, [first, long])
    assert long.done is not None
    gaps = list(pairwise(first.chunks))
    before = [b - a for a, b in gaps if b <= long.sent]
    during = [b - a for a, b in gaps if b > long.sent and a < long.done]
    longest = max(during, default=None)
    median_gap = median(list(before))
    target = None if median_gap is None else max(0.5, 4 * median_gap)
    summary = {
        "longest_pause_s": longest,
        "median_gap_s": median_gap,
        "target_s": target,
        "met": None if longest is None or target is None else longest <= target,
        "long_prompt_s": long.done - long.sent,
        "long_prompt_tokens": long.prompt_tokens,
        "long_prompt_refused": long.status in REFUSALS,
        "covered": bool(first.chunks) and first.chunks[-1] > long.done,
    }
    progress(
        f"  run {run} pause {endpoint.name:<14} longest {fmt(longest, 3)} s, "
        f"median gap {fmt(median_gap, 3)} s, long prompt {fmt(summary['long_prompt_s'])} s"
    )
    return {
        "system": endpoint.name,
        "run": run,
        "summary": summary,
        "streams": [asdict(first), asdict(long)],
    }


# --------------------------------------------------------------------------- summary


PER_RUN = ("met", "covered", "long_prompt_refused")  # listed run by run, not a median


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    values = {k: [r["summary"][k] for r in results] for k in results[0]["summary"]}
    return {k: v if k in PER_RUN else median(v) for k, v in values.items()}


def summarize(clients: list[dict[str, Any]], pauses: list[dict[str, Any]]) -> dict[str, Any]:
    levels = sorted({r["clients"] for r in clients})
    table: dict[str, Any] = {}
    for c in levels:
        row: dict[str, Any] = {
            name: medians([r for r in clients if r["clients"] == c and r["system"] == name])
            for name in SYSTEMS
        }
        row["gw/mlx aggregate"] = ratio(row[GATEWAY]["aggregate_tps"], row[SERVER]["aggregate_tps"])
        row["gw/mlx wall"] = ratio(row[GATEWAY]["wall_tps"], row[SERVER]["wall_tps"])
        table[str(c)] = row
    pause: dict[str, Any] = {}
    for name in SYSTEMS:
        mine = [r for r in pauses if r["system"] == name]
        if mine:
            pause[name] = medians(mine)
    return {"clients": table, "pause": pause}


def print_report(summary: dict[str, Any], args: argparse.Namespace, model_dir: Path) -> None:
    print(f"\nmodel {model_dir}  runs {args.runs}  max_tokens {args.max_tokens}  (medians)")
    if summary["clients"]:
        print_clients(summary)
    print_pause(summary, args)


def print_clients(summary: dict[str, Any]) -> None:
    print("\nPart 1: C concurrent streaming clients (gw = gateway, mlx = mlx_lm.server)")
    groups = ("decode tok/s", "wall tok/s", "TTFT p50 s", "TTFT p95 s", "gap p50 s", "gap p99 s")
    head = f"{'':>7}" + "".join(f"{g:^{24 if i < 2 else 16}}" for i, g in enumerate(groups))
    head += f"{'tokens':^16}"
    sub = f"{'C':>7}" + f"{'gw':>8}{'mlx':>8}{'gw/mlx':>8}" * 2 + f"{'gw':>8}{'mlx':>8}" * 5
    print(head)
    print(sub)
    print("-" * len(sub))
    refused = []
    for c, row in summary["clients"].items():
        gw, mlx = row[GATEWAY], row[SERVER]
        line = f"{c:>7}{fmt(gw['aggregate_tps']):>8}{fmt(mlx['aggregate_tps']):>8}"
        line += f"{fmt(row['gw/mlx aggregate']):>8}"
        line += f"{fmt(gw['wall_tps']):>8}{fmt(mlx['wall_tps']):>8}{fmt(row['gw/mlx wall']):>8}"
        for key in ("ttft_p50_s", "ttft_p95_s", "gap_p50_s", "gap_p99_s"):
            line += f"{fmt(gw[key], 3):>8}{fmt(mlx[key], 3):>8}"
        line += f"{fmt(gw['completion_tokens'], 0):>8}{fmt(mlx['completion_tokens'], 0):>8}"
        print(line)
        refused += [f"C={c} {n}: {row[n]['refused']:.0f}" for n in SYSTEMS if row[n]["refused"]]
    print("gw/mlx above 1: the gateway serves more tokens per second in all")
    if refused:
        print("refused requests (median per run): " + ", ".join(refused))


def print_pause(summary: dict[str, Any], args: argparse.Namespace) -> None:
    if not summary["pause"]:
        return
    print(
        f"\nPart 2: longest pause of a stream while a ~{args.long_prompt_tokens}-token prompt "
        "is prefilled beside it"
    )
    cols = ("prompt tok", "long prompt s", "median gap s", "longest pause s", "target s")
    header = f"{'system':<15}" + "".join(f"{c:>16}" for c in cols) + f"{'met':>8}{'covered':>10}"
    print(header)
    print("-" * len(header))
    for name, row in summary["pause"].items():
        print(
            f"{name:<15}{fmt(row['long_prompt_tokens'], 0):>16}{fmt(row['long_prompt_s']):>16}"
            f"{fmt(row['median_gap_s'], 3):>16}{fmt(row['longest_pause_s'], 3):>16}"
            f"{fmt(row['target_s'], 3):>16}{yes_no(row['met']):>8}{yes_no(row['covered']):>10}"
        )
    print("target = max(0.5 s, 4 x median gap); met = longest pause within it (per run)")


def yes_no(flags: list[bool | None]) -> str:
    return ",".join("-" if f is None else ("yes" if f else "no") for f in flags)


# --------------------------------------------------------------------------- main


def measure(
    endpoints: dict[str, Endpoint], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    progress("warming up (unmeasured)")
    for endpoint in endpoints.values():
        check(endpoint, [stream_timed(endpoint, Stream(endpoint.name, 0, WARMUP_PROMPT, 8))])
    clients: list[dict[str, Any]] = []
    pauses: list[dict[str, Any]] = []
    turn = 0
    for run in range(1, args.runs + 1):
        for c in [] if args.skip_clients else args.clients:
            for name in SYSTEMS if turn % 2 == 0 else SYSTEMS[::-1]:
                clients.append(measure_clients(endpoints[name], c, run, args.max_tokens))
            turn += 1
        if not args.skip_pause:
            for name in SYSTEMS if turn % 2 == 0 else SYSTEMS[::-1]:
                pause = measure_pause(endpoints[name], run, args.long_prompt_tokens, args.timeout)
                pauses.append(pause)
            turn += 1
    return clients, pauses


def bench(args: argparse.Namespace, model_dir: Path) -> tuple[list[Any], list[Any]]:
    """Start both servers, measure, and stop everything whatever happens."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-concurrency-")))
        endpoints: dict[str, Endpoint] = {}

        port = free_port()
        progress(f"starting mlx_lm.server on 127.0.0.1:{port}")
        log = tmp / "mlx_lm.server.log"
        cmd = mlx_server_cmd(model_dir, port)
        url = f"http://127.0.0.1:{port}/health"
        stack.enter_context(running_server(SERVER, cmd, dict(os.environ), url, log, args.timeout))
        endpoints[SERVER] = make_endpoint(SERVER, port, str(model_dir), log, args.timeout)

        port = free_port()
        progress(f"starting gateway on 127.0.0.1:{port}")
        log = tmp / "gateway.log"
        env = {
            **os.environ,
            "GATEWAY_MODELS_DEFAULT": model_dir.name,
            "GATEWAY_AUTH_ENABLED": "false",  # loopback only
            "GATEWAY_ENGINE_QUEUE_PER_KEY": str(max(8, 2 * max(args.clients))),
        }
        cmd = gateway_cmd(model_dir, port, tmp / "gateway-data") + args.gateway_arg
        url = f"http://127.0.0.1:{port}/ready"
        stack.enter_context(running_server(GATEWAY, cmd, env, url, log, args.timeout))
        endpoints[GATEWAY] = make_endpoint(GATEWAY, port, model_dir.name, log, args.timeout)

        results = measure(endpoints, args)
        progress("stopping servers")
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--clients", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--long-prompt-tokens", type=int, default=1000)
    parser.add_argument("--skip-pause", action="store_true", help="skip part 2")
    parser.add_argument("--skip-clients", action="store_true", help="skip part 1")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to start a server or wait on a chunk"
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra gateway command-line argument (repeatable; --gateway-arg=--flag)",
    )
    parser.add_argument("--json", type=Path, help="also write raw samples and figures here")
    args = parser.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--clients takes comma-separated integers, e.g. 1,2,4,8")
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients needs at least one level, each at least 1")
    if args.runs < 1 or args.max_tokens < 2 or args.long_prompt_tokens < 1:
        parser.error("--runs and --long-prompt-tokens must be at least 1, --max-tokens 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model_dir.expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        print(f"bench: {model_dir} has no config.json; pass --model-dir", file=sys.stderr)
        return 2
    started = time.time()
    result, code = run_guarded(lambda: bench(args, model_dir))
    if result is None:
        return code
    clients, pauses = result
    summary = summarize(clients, pauses)
    print_report(summary, args, model_dir)
    print(f"\n(wall time {time.time() - started:.0f} s)")
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        document = {
            "config": {**config, "model_dir": str(model_dir)},
            "versions": versions(),
            **summary,
            "samples": {"clients": clients, "pause": pauses},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
