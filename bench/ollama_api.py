"""Ollama-API benchmark: what the Ollama codec costs next to the OpenAI one, on one gateway.

Run from the repository root, as a script (like the other benches, it imports its
helpers with ``from serving import ...``, which works because Python puts ``bench/``
first on ``sys.path``)::

    .venv/bin/python bench/ollama_api.py [--model-dir DIR] [--runs 3] [--max-tokens 32]
                                         [--json PATH]

One gateway (``python -m gateway serve``, authentication off on loopback, as in the
other benches) serves one model, its default.  The bench never imports MLX.  Each
run sends the same request through both APIs, one after the other, and alternates
which API goes first (odd runs OpenAI, even runs Ollama):

``openai``
    ``POST /v1/chat/completions``, streamed as SSE, ``temperature`` 0, ``seed`` 0,
    ``max_tokens``, ``stream_options.include_usage``.
``ollama``
    ``POST /api/chat``, streamed as NDJSON, ``options``: ``temperature`` 0, ``seed``
    0, ``num_predict`` = max tokens, and ``repeat_penalty`` 1.0, ``top_k`` 0,
    ``top_p`` 1.0: without them the gateway applies Ollama's defaults (a repeat
    penalty of 1.1 among them), and the two APIs would not generate the same tokens.

Both are read with raw ``httpx`` streaming over one keep-alive client, so no SDK's
parsing counts.  Each run uses its own "cold" prompt (``serving.cold_prompt``: never
seen before); the gateway is started with ``engine.prompt_cache_size`` 0, so the API
that goes second in a run is not answered from the prompt cache the first one just
filled (its TTFT would otherwise not be comparable).  Each API first gets one
unmeasured warm-up request.

Figures, per API (medians over runs):

TTFT (s)
    From sending the request to the first non-empty content piece.
decode tok/s
    Completion tokens after the first, divided by the time from the first to the
    last content piece.  Tokens: the usage chunk's ``completion_tokens`` (OpenAI),
    the final object's ``eval_count`` (Ollama).
total (s)
    From sending the request to the end of the response body.

Ratios ``ollama/openai``: for TTFT and total, above 1 means Ollama is slower; for
decode tok/s, below 1 means Ollama is slower.  The prompt and completion token
counts and the number of content pieces are printed too, so a figure that differs
because the work differed (an early stop) is visible.

Ollama also reports durations of its own (nanoseconds, shown in seconds), printed
beside what the client measured on the same request, with the median of the per
request ratios server/client:

``load_duration + prompt_eval_duration`` vs client TTFT
    The server's time to first token; below the client's by the HTTP and parsing
    the client sees.  Both parts are also shown alone.
``eval_duration`` vs client decode span
    From the first token to the end of the response, vs the client's first to last
    content piece.
``eval_count / eval_duration`` vs client decode tok/s
    The server's tokens per second counts every token over the span after the first
    one, the client's all but the first, so for N tokens the server's figure reads
    about N/(N-1) times higher even when both clocks agree.
``total_duration`` vs client total

The agreement line says in how many runs both APIs produced the same text (greedy
decoding: they should in every run).  Nothing is asserted: the figures are
measurements of this machine at this moment, and other load on it shows up in them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving import (
    GATEWAY,
    WARMUP_PROMPT,
    BenchError,
    cold_prompt,
    fmt,
    free_port,
    gateway_cmd,
    log_tail,
    median,
    progress,
    rate,
    ratio,
    run_args,
    run_guarded,
    running_server,
    write_json,
)

if TYPE_CHECKING:
    import httpx

OPENAI = "openai"
OLLAMA = "ollama"
APIS = (OPENAI, OLLAMA)
PATHS = {OPENAI: "/v1/chat/completions", OLLAMA: "/api/chat"}
NS = 1e-9


@dataclass
class Target:
    """The running gateway and the client that measures it."""

    base_url: str
    model: str
    client: httpx.Client
    log: Path


@dataclass
class Sample:
    """One measured request."""

    api: str
    run: int
    position: int  # 1: this API went first in its run, 2: second
    ttft_s: float | None
    decode_tps: float | None
    decode_s: float | None  # first to last content piece
    completion_tokens: int
    prompt_tokens: int | None
    total_s: float
    text: str
    content_pieces: int
    finish: str | None
    server: dict[str, Any] = field(default_factory=dict)  # Ollama's own durations, in s


def request_body(api: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    if api == OPENAI:
        return {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    options = {
        "temperature": 0.0,
        "seed": 0,
        "num_predict": max_tokens,
        "repeat_penalty": 1.0,
        "top_k": 0,
        "top_p": 1.0,
    }
    return {"model": model, "messages": messages, "stream": True, "options": options}


def openai_event(line: str) -> dict[str, Any] | None:
    """The JSON of one SSE ``data:`` line, ``None`` for anything else and ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return None
    event: dict[str, Any] = json.loads(data)
    if "error" in event:
        raise BenchError(f"openai: error in the stream: {event['error']}")
    return event


def openai_content(event: dict[str, Any]) -> tuple[str, str | None]:
    pieces, finish = [], None
    for choice in event.get("choices") or ():
        pieces.append((choice.get("delta") or {}).get("content") or "")
        finish = choice.get("finish_reason") or finish
    return "".join(pieces), finish


def ollama_event(line: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    event: dict[str, Any] = json.loads(line)
    if "error" in event:
        raise BenchError(f"ollama: error in the stream: {event['error']}")
    return event


def server_durations(final: dict[str, Any]) -> dict[str, Any]:
    """Ollama's final object in seconds, with its own tokens per second."""
    seconds = {
        name: final[f"{name}_duration"] * NS
        for name in ("total", "load", "prompt_eval", "eval")
        if isinstance(final.get(f"{name}_duration"), int | float)
    }
    out: dict[str, Any] = {f"{name}_s": value for name, value in seconds.items()}
    out["eval_count"] = final.get("eval_count")
    out["prompt_eval_count"] = final.get("prompt_eval_count")
    if "load" in seconds and "prompt_eval" in seconds:
        out["ttft_s"] = seconds["load"] + seconds["prompt_eval"]
    count = final.get("eval_count")
    out["tps"] = count / seconds["eval"] if count and seconds.get("eval") else None
    return out


def stream_once(target: Target, api: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed greedy chat request, timed per non-empty content piece."""
    body = request_body(api, target.model, prompt, max_tokens)
    url = target.base_url + PATHS[api]
    first: float | None = None
    last = 0.0
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    finish: str | None = None
    start = time.perf_counter()
    with target.client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise BenchError(f"{api}: {response.status_code} {response.read().decode()[:500]}")
        for line in response.iter_lines():
            now = time.perf_counter()
            if api == OPENAI:
                event = openai_event(line)
                if event is None:
                    continue
                usage = event.get("usage") or usage
                text, ended = openai_content(event)
                finish = ended or finish
            else:
                event = ollama_event(line)
                if event is None:
                    continue
                text = (event.get("message") or {}).get("content") or ""
                if event.get("done"):
                    final, finish = event, event.get("done_reason")
            if text:
                first = now if first is None else first
                last = now
                pieces.append(text)
    end = time.perf_counter()
    if api == OPENAI:
        tokens = usage["completion_tokens"] if usage else len(pieces)
        prompt_tokens = usage.get("prompt_tokens") if usage else None
    else:
        if final is None:
            raise BenchError("ollama: the stream ended without its final `done` object")
        tokens = final.get("eval_count", len(pieces))
        prompt_tokens = final.get("prompt_eval_count")
    return {
        "ttft_s": None if first is None else first - start,
        "decode_tps": None if first is None else rate(tokens, first, last),
        "decode_s": None if first is None else last - first,
        "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "total_s": end - start,
        "text": "".join(pieces),
        "content_pieces": len(pieces),
        "finish": finish,
        "server": server_durations(final) if final is not None else {},
    }


def request(target: Target, api: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """``stream_once``, turning any failure into a ``BenchError`` with the gateway's log."""
    try:
        return stream_once(target, api, prompt, max_tokens)
    except Exception as exc:
        body = request_body(api, target.model, prompt[:40] + "...", max_tokens)
        raise BenchError(
            f"{api}: POST {PATHS[api]} failed: {exc}\nrequest: {json.dumps(body)}\n"
            f"--- log tail ({target.log}) ---\n{log_tail(target.log)}"
        ) from exc


def measure(target: Target, runs: int, max_tokens: int) -> list[Sample]:
    progress("warming up (unmeasured)")
    for api in APIS:
        request(target, api, WARMUP_PROMPT, min(8, max_tokens))
    samples: list[Sample] = []
    for run in range(1, runs + 1):
        prompt = cold_prompt(run)
        order = APIS if run % 2 else APIS[::-1]
        for position, api in enumerate(order, 1):
            sample = Sample(api, run, position, **request(target, api, prompt, max_tokens))
            progress(
                f"  run {run} {api:<7} TTFT {fmt(sample.ttft_s, 3)} s, "
                f"{sample.completion_tokens} tokens, {fmt(sample.decode_tps)} tok/s, "
                f"total {fmt(sample.total_s, 3)} s"
            )
            samples.append(sample)
    return samples


# --------------------------------------------------------------------------- summary


def summarize_api(samples: list[Sample], api: str) -> dict[str, float | None]:
    mine = [s for s in samples if s.api == api]
    return {
        "ttft_s": median([s.ttft_s for s in mine]),
        "decode_tps": median([s.decode_tps for s in mine]),
        "total_s": median([s.total_s for s in mine]),
        "prompt_tokens": median([s.prompt_tokens for s in mine]),
        "completion_tokens": median([float(s.completion_tokens) for s in mine]),
        "content_pieces": median([float(s.content_pieces) for s in mine]),
    }


# (label, server figure, client figure)
HONESTY = (
    ("TTFT s (load + prompt_eval)", "ttft_s", "ttft_s"),
    ("  load_duration s", "load_s", None),
    ("  prompt_eval_duration s", "prompt_eval_s", None),
    ("decode s (eval_duration)", "eval_s", "decode_s"),
    ("decode tok/s (eval_count/eval_duration)", "tps", "decode_tps"),
    ("total s (total_duration)", "total_s", "total_s"),
)


def summarize_server(samples: list[Sample]) -> dict[str, dict[str, float | None]]:
    """Ollama's reported durations beside the client's, and their per-request ratio."""
    mine = [s for s in samples if s.api == OLLAMA]
    rows: dict[str, dict[str, float | None]] = {}
    for label, server_key, client_key in HONESTY:
        server = [s.server.get(server_key) for s in mine]
        row: dict[str, float | None] = {"server": median(server), "client": None, "ratio": None}
        if client_key is not None:
            client = [getattr(s, client_key) for s in mine]
            row["client"] = median(client)
            row["ratio"] = median([ratio(a, b) for a, b in zip(server, client, strict=True)])
        rows[label] = row
    return rows


def agreement(samples: list[Sample]) -> dict[str, Any]:
    """Per run, whether both APIs produced the same text and the same token count."""
    runs = sorted({s.run for s in samples})
    per_run = []
    for run in runs:
        mine = {s.api: s for s in samples if s.run == run}
        a, b = mine[OPENAI], mine[OLLAMA]
        per_run.append(
            {
                "run": run,
                "same_text": a.text == b.text,
                "same_tokens": a.completion_tokens == b.completion_tokens,
            }
        )
    same = sum(1 for r in per_run if r["same_text"])
    return {"runs": len(runs), "identical_runs": same, "per_run": per_run}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    apis = {api: summarize_api(samples, api) for api in APIS}
    o, l = apis[OPENAI], apis[OLLAMA]  # noqa: E741
    ratios = {key: ratio(l[key], o[key]) for key in ("ttft_s", "decode_tps", "total_s")}
    return {
        "apis": apis,
        "ratios": ratios,
        "ollama_reported": summarize_server(samples),
        "agreement": agreement(samples),
    }


ROWS = (
    ("TTFT s", "ttft_s", 3, "above 1: Ollama answers later"),
    ("decode tok/s", "decode_tps", 2, "below 1: Ollama decodes slower"),
    ("total s", "total_s", 3, "above 1: Ollama takes longer"),
    ("prompt tokens", "prompt_tokens", 0, ""),
    ("completion tokens", "completion_tokens", 0, ""),
    ("content pieces", "content_pieces", 0, ""),
)


def print_report(summary: dict[str, Any], args: argparse.Namespace, model_dir: Path) -> None:
    apis, ratios = summary["apis"], summary["ratios"]
    print()
    print(f"model {model_dir}  runs {args.runs}  max_tokens {args.max_tokens}  (medians)")
    header = f"{'figure':<20}{'openai':>10}{'ollama':>10}{'ollama/openai':>15}"
    print(header)
    print("-" * len(header))
    for label, key, digits, note in ROWS:
        openai, ollama = apis[OPENAI][key], apis[OLLAMA][key]
        line = f"{label:<20}{fmt(openai, digits):>10}{fmt(ollama, digits):>10}"
        line += f"{fmt(ratios[key]) if key in ratios else '':>15}"
        print(f"{line}   {note}" if note else line.rstrip())

    print()
    header = f"{'ollama: reported vs measured':<42}{'server':>9}{'client':>9}{'server/client':>15}"
    print(header)
    print("-" * len(header))
    for label, row in summary["ollama_reported"].items():
        digits = 2 if "tok/s" in label else 3
        print(
            f"{label:<42}{fmt(row['server'], digits):>9}{fmt(row['client'], digits):>9}"
            f"{fmt(row['ratio']):>15}"
        )
    print("(server/client: median of the per-request ratios)")

    agree = summary["agreement"]
    differing = [r["run"] for r in agree["per_run"] if not r["same_text"]]
    print(
        f"\ngreedy outputs identical on both APIs in {agree['identical_runs']}/{agree['runs']} runs"
        + (f" (differ in runs {', '.join(map(str, differing))})" if differing else "")
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return run_args(__doc__, argv, max_tokens=32)


def bench(args: argparse.Namespace, model_dir: Path) -> tuple[dict[str, Any], list[Sample]]:
    """Start the gateway, measure both APIs, and stop it whatever happens."""
    import httpx

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ollama-")))
        port = free_port()
        progress(f"starting gateway on 127.0.0.1:{port} with {model_dir}")
        log = tmp / "gateway.log"
        env = {
            **os.environ,
            "GATEWAY_MODELS_DEFAULT": model_dir.name,
            # Loopback only, so the bench may turn authentication off (the gateway
            # allows that only on loopback), as the other benches do.
            "GATEWAY_AUTH_ENABLED": "false",
            # Each run sends one prompt to both APIs: no prompt cache, so both are cold.
            "GATEWAY_ENGINE_PROMPT_CACHE_SIZE": "0",
        }
        stack.enter_context(
            running_server(
                GATEWAY,
                gateway_cmd(model_dir, port, tmp / "gateway-data"),
                env,
                f"http://127.0.0.1:{port}/ready",
                log,
                args.start_timeout,
            )
        )
        client = stack.enter_context(httpx.Client(timeout=args.request_timeout))
        target = Target(f"http://127.0.0.1:{port}", model_dir.name, client, log)
        samples = measure(target, args.runs, args.max_tokens)
        progress("stopping the gateway")
    return summarize(samples), samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model_dir.expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        print(
            f"bench: {model_dir} is not an MLX model directory (no config.json).\n"
            "Build a tiny random one with\n"
            "  .venv/bin/python -m tests.support.tiny_model /tmp/bench-tiny/tiny\n"
            "and pass --model-dir /tmp/bench-tiny/tiny",
            file=sys.stderr,
        )
        return 2
    started = time.time()
    result, code = run_guarded(lambda: bench(args, model_dir))
    if result is None:
        return code
    summary, samples = result
    print_report(summary, args, model_dir)
    print(f"\n(wall time {time.time() - started:.0f} s)")
    if args.json:
        write_json(
            args.json,
            summary,
            samples,
            model_dir=str(model_dir),
            runs=args.runs,
            max_tokens=args.max_tokens,
            gateway_env={"GATEWAY_AUTH_ENABLED": "false", "GATEWAY_ENGINE_PROMPT_CACHE_SIZE": "0"},
        )
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
