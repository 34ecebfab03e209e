"""Constraint benchmark: what constrained decoding costs the gateway, in one run.

Run from the repository root, as a script (like the other benches, it imports its
helpers with ``from serving import ...``, which works because Python puts the
script's directory, ``bench/``, first on ``sys.path``; ``python -m bench.constraints``
does not)::

    .venv/bin/python bench/constraints.py [--model-dir DIR] [--runs 3] [--max-tokens 64]
                                          [--no-logprobs] [--json PATH]

One gateway (``python -m gateway serve``, authentication off on loopback) serves the
bundled model; the bench streams from it with the official ``openai`` SDK and never
imports MLX.  Three kinds of request, the same user prompt, greedy (temperature 0),
the same ``max_tokens``, one request at a time:

``free``
    a chat request that asks for a JSON answer, without any constraint;
``json_schema``
    the same prompt with ``response_format: {"type": "json_schema", ...}`` (a
    ``person`` object: ``name``, ``age``, ``city``, all required, nothing else), so
    llguidance masks the logits token by token;
``tool_call``
    the same prompt with ``tools`` (a ``get_person`` function whose parameters are
    that schema) and ``tool_choice`` naming it: a forced, constrained tool call.
    SmolLM2's template knows nothing of tools, so the gateway writes them into the
    system prompt: this prompt is longer than the other two.

Every request's user message starts with its own ``Request N.``, so no two requests
have the same prompt: the prompt cache can serve only what a kind always shares
(the system prompt, seeded by the warm-ups), the same for every run and order.  Each
run visits the kinds in a rotating order.  One unmeasured warm-up of each kind runs
first, ``free`` then ``json_schema`` then ``tool_call``; the ``json_schema`` warm-up is
the first constrained request the gateway sees (llguidance builds its view of the
tokenizer then), and its TTFT is reported beside the median TTFT of the measured
``json_schema`` requests.

Timing.  By default every request asks for ``logprobs``: the gateway then sends one
chunk per generated token, also for tokens that produce no text yet (a forced tool
call writes ``{"name": "get_person", "arguments": `` before its first visible delta),
so each token has its own timestamp.  The logprobs cost the same in every kind.
``--no-logprobs`` times visible chunks instead (content or tool-call deltas): a
forced tool call then shows nothing for its first 12 tokens and the token count of
the window is not known, so the bench counts visible chunks (about one per token).

Figures (medians over runs):

decode tok/s
    Tokens after the first, divided by the time from the first token's chunk to the
    last one's (``--no-logprobs``: visible chunks after the first, over the time from
    the first visible chunk to the last).
TTFT (s)
    From sending the request to the first token's chunk (``--no-logprobs``: the
    first visible chunk).
first output (s)
    From sending the request to the first chunk with content or a tool-call delta:
    what a client sees; for ``tool_call`` it comes after the call's JSON prefix.
prompt / cached / completion tokens
    From the stream's usage chunk (``stream_options.include_usage``).
valid
    How many outputs parse as JSON and validate against the schema (``jsonschema``):
    the content for ``json_schema``, the call's arguments (and its name) for
    ``tool_call``.  For ``free`` the first ``{`` to the last ``}`` of the content is
    tried, for information only: nothing constrains it.

Ratios: ``json_schema/free`` and ``tool_call/free`` decode speed (1.00: as fast, below
1: slower).  Nothing is asserted: the figures are measurements of this machine at
this moment.  A constrained output that does not validate is printed with the
gateway's log tail, and the bench exits with status 1 after its report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from serving import (
    DEFAULT_MODEL_DIR,
    BenchError,
    Endpoint,
    _exit_on_sigterm,
    fmt,
    free_port,
    gateway_cmd,
    log_tail,
    make_endpoint,
    median,
    progress,
    rate,
    ratio,
    running_server,
)
from serving import versions as serving_versions

FREE = "free"
JSON_SCHEMA = "json_schema"
TOOL_CALL = "tool_call"
KINDS = (FREE, JSON_SCHEMA, TOOL_CALL)

PROMPT = "Describe a fictional person as JSON with name, age and city."
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
TOOL_NAME = "get_person"


def request_options(kind: str) -> dict[str, Any]:
    """The arguments that make a request of ``kind`` (nothing for ``free``)."""
    if kind == JSON_SCHEMA:
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
            }
        }
    if kind == TOOL_CALL:
        return {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": TOOL_NAME,
                        "description": "Record a fictional person.",
                        "parameters": PERSON_SCHEMA,
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
        }
    return {}


def prompt_of(number: int) -> str:
    """The user message of one request: unique by its first words."""
    return f"Request {number}. {PROMPT}"


@dataclass
class Sample:
    """One request (measured, or a warm-up with ``run`` 0)."""

    kind: str
    run: int
    request: int
    ttft_s: float | None
    first_output_s: float | None
    decode_tps: float | None
    timed_tokens: int  # tokens (or visible chunks) in the decode window
    completion_tokens: int | None
    prompt_tokens: int | None
    cached_tokens: int | None
    total_s: float
    finish_reason: str | None
    text: str  # the content, or the tool call's arguments
    tool_name: str | None
    parses: bool
    valid: bool
    problem: str | None = None  # why it does not validate
    tool_calls: list[dict[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- one request


def stream_request(
    endpoint: Endpoint, kind: str, prompt: str, max_tokens: int, logprobs: bool
) -> dict[str, Any]:
    """One streamed, greedy chat completion of ``kind``, timed per chunk."""
    extra: dict[str, Any] = {"logprobs": True} if logprobs else {}
    start = time.perf_counter()
    stream = endpoint.client.chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
        **request_options(kind),
        **extra,
    )
    token_times: list[float] = []  # one entry per generated token (logprobs mode)
    visible_times: list[float] = []  # chunks with content or a tool-call delta
    pieces: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish: str | None = None
    usage = None
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                finish = choice.finish_reason
            if choice.logprobs is not None and choice.logprobs.content:
                token_times += [now] * len(choice.logprobs.content)
            delta = choice.delta
            if delta is None:
                continue
            shown = False
            if delta.content:
                pieces.append(delta.content)
                shown = True
            for call in delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = entry["id"] or (call.id or "")
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
                    shown = shown or bool(call.function.name or call.function.arguments)
            if shown:
                visible_times.append(now)
    end = time.perf_counter()
    times = token_times if logprobs else visible_times
    return {
        "ttft_s": times[0] - start if times else None,
        "first_output_s": visible_times[0] - start if visible_times else None,
        "decode_tps": rate(len(times), times[0], times[-1]) if times else None,
        "timed_tokens": len(times),
        "completion_tokens": usage.completion_tokens if usage is not None else None,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "cached_tokens": cached_tokens(usage),
        "total_s": end - start,
        "finish_reason": finish,
        "content": "".join(pieces),
        "tool_calls": [calls[i] for i in sorted(calls)],
    }


def cached_tokens(usage: Any) -> int | None:
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    value = getattr(details, "cached_tokens", None)
    return int(value) if value is not None else None


def describe_request(endpoint: Endpoint, kind: str, prompt: str, args: argparse.Namespace) -> str:
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **({"logprobs": True} if args.logprobs else {}),
        **request_options(kind),
    }
    return "POST /v1/chat/completions " + json.dumps(body)


# --------------------------------------------------------------------------- checking


def check_output(kind: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Whether the output parses as JSON and validates; ``problem`` says why not."""
    import jsonschema

    name = None
    if kind == TOOL_CALL:
        calls = figures["tool_calls"]
        if len(calls) != 1:
            return {
                "text": figures["content"],
                "tool_name": None,
                "parses": False,
                "valid": False,
                "problem": f"{len(calls)} tool calls, expected 1",
            }
        text, name = calls[0]["arguments"], calls[0]["name"]
    elif kind == FREE:
        content = figures["content"]
        text = content[content.find("{") : content.rfind("}") + 1] if "{" in content else ""
    else:
        text = figures["content"]
    try:
        value = json.loads(text)
    except ValueError as exc:
        return {
            "text": text,
            "tool_name": name,
            "parses": False,
            "valid": False,
            "problem": f"not JSON: {exc}",
        }
    errors = list(jsonschema.Draft202012Validator(PERSON_SCHEMA).iter_errors(value))
    problem = "; ".join(e.message for e in errors) or None
    if kind == TOOL_CALL and name != TOOL_NAME:
        problem = f"tool name {name!r}, expected {TOOL_NAME!r}" + (
            f"; {problem}" if problem else ""
        )
    if kind == FREE:
        text = figures["content"]
    return {
        "text": text,
        "tool_name": name,
        "parses": True,
        "valid": problem is None,
        "problem": problem,
    }


# --------------------------------------------------------------------------- measuring


class Bench:
    def __init__(self, endpoint: Endpoint, args: argparse.Namespace) -> None:
        self.endpoint = endpoint
        self.args = args
        self.requests = 0
        self.failures: list[Sample] = []

    def request(self, kind: str, run: int) -> Sample:
        self.requests += 1
        prompt = prompt_of(self.requests)
        try:
            figures = stream_request(
                self.endpoint, kind, prompt, self.args.max_tokens, self.args.logprobs
            )
        except Exception as exc:
            raise BenchError(
                f"{kind}: the request failed: {exc!r}\n"
                f"request: {describe_request(self.endpoint, kind, prompt, self.args)}\n"
                f"--- log tail ({self.endpoint.log}) ---\n{log_tail(self.endpoint.log)}"
            ) from exc
        checked = check_output(kind, figures)
        sample = Sample(
            kind=kind,
            run=run,
            request=self.requests,
            ttft_s=figures["ttft_s"],
            first_output_s=figures["first_output_s"],
            decode_tps=figures["decode_tps"],
            timed_tokens=figures["timed_tokens"],
            completion_tokens=figures["completion_tokens"],
            prompt_tokens=figures["prompt_tokens"],
            cached_tokens=figures["cached_tokens"],
            total_s=figures["total_s"],
            finish_reason=figures["finish_reason"],
            tool_calls=figures["tool_calls"],
            **checked,
        )
        label = f"run {run}" if run else "warm-up"
        progress(
            f"  {label:<8} {kind:<12} TTFT {fmt(sample.ttft_s, 3)} s, first output "
            f"{fmt(sample.first_output_s, 3)} s, {sample.completion_tokens} tokens "
            f"({sample.cached_tokens} of {sample.prompt_tokens} prompt tokens cached), "
            f"{fmt(sample.decode_tps)} tok/s, finish {sample.finish_reason}, "
            f"{'valid' if sample.valid else 'NOT valid'}"
        )
        if kind != FREE and not sample.valid:
            self.failures.append(sample)
            progress(
                f"  !! {kind} output does not validate: {sample.problem}\n"
                f"     request: {describe_request(self.endpoint, kind, prompt, self.args)}\n"
                f"     output: {sample.text!r} (tool calls {sample.tool_calls}, "
                f"finish {sample.finish_reason})\n"
                f"--- log tail ({self.endpoint.log}) ---\n{log_tail(self.endpoint.log)}"
            )
        return sample


def run_order(run: int) -> tuple[str, ...]:
    """The kinds in a rotating order, so none always goes first."""
    shift = (run - 1) % len(KINDS)
    return KINDS[shift:] + KINDS[:shift]


def measure(bench: Bench, runs: int) -> tuple[list[Sample], list[Sample]]:
    progress("warming up (unmeasured): free, then the first constrained requests")
    warmups = [bench.request(kind, 0) for kind in KINDS]
    samples: list[Sample] = []
    for run in range(1, runs + 1):
        samples += [bench.request(kind, run) for kind in run_order(run)]
    return warmups, samples


# --------------------------------------------------------------------------- summary


def summarize_kind(samples: list[Sample], kind: str) -> dict[str, Any]:
    mine = [s for s in samples if s.kind == kind]
    return {
        "decode_tps": median([s.decode_tps for s in mine]),
        "ttft_s": median([s.ttft_s for s in mine]),
        "first_output_s": median([s.first_output_s for s in mine]),
        "prompt_tokens": median([s.prompt_tokens for s in mine]),
        "cached_tokens": median([s.cached_tokens for s in mine]),
        "completion_tokens": median([s.completion_tokens for s in mine]),
        "parses": sum(s.parses for s in mine),
        "valid": sum(s.valid for s in mine),
        "samples": len(mine),
        "finish_reasons": sorted({str(s.finish_reason) for s in mine}),
    }


def summarize(warmups: list[Sample], samples: list[Sample]) -> dict[str, Any]:
    kinds = {kind: summarize_kind(samples, kind) for kind in KINDS}
    free, schema, tool = kinds[FREE], kinds[JSON_SCHEMA], kinds[TOOL_CALL]
    first = {s.kind: s for s in warmups}
    ratios = {
        "json_schema/free decode": ratio(schema["decode_tps"], free["decode_tps"]),
        "tool_call/free decode": ratio(tool["decode_tps"], free["decode_tps"]),
        "json_schema/free TTFT": ratio(schema["ttft_s"], free["ttft_s"]),
        "tool_call/free TTFT": ratio(tool["ttft_s"], free["ttft_s"]),
    }
    first_request = {
        "first constrained (json_schema warm-up) TTFT": first[JSON_SCHEMA].ttft_s,
        "later json_schema TTFT (median)": schema["ttft_s"],
        "first free (warm-up, first request) TTFT": first[FREE].ttft_s,
        "later free TTFT (median)": free["ttft_s"],
        "first tool_call (warm-up) TTFT": first[TOOL_CALL].ttft_s,
        "later tool_call TTFT (median)": tool["ttft_s"],
    }
    timed_vs_usage = [
        (s.timed_tokens, s.completion_tokens) for s in samples if s.completion_tokens is not None
    ]
    return {
        "kinds": kinds,
        "ratios": ratios,
        "first_request": first_request,
        "timed_tokens_match_usage": sum(t == u for t, u in timed_vs_usage),
        "requests_with_usage": len(timed_vs_usage),
    }


def print_report(summary: dict[str, Any], args: argparse.Namespace, model_dir: Path) -> None:
    kinds, ratios = summary["kinds"], summary["ratios"]
    timing = "per-token chunks (logprobs)" if args.logprobs else "visible chunks"
    print()
    print(
        f"model {model_dir}  runs {args.runs}  max_tokens {args.max_tokens}  "
        f"timing: {timing}  (medians)"
    )
    header = f"{'kind':<13}{'decode tok/s':>13}{'TTFT s':>9}{'first output s':>16}"
    header += f"{'prompt tok':>12}{'cached':>8}{'completion tok':>16}{'valid':>8}  finish"
    print(header)
    print("-" * (len(header) + 6))
    for name, row in kinds.items():
        print(
            f"{name:<13}{fmt(row['decode_tps']):>13}{fmt(row['ttft_s'], 3):>9}"
            f"{fmt(row['first_output_s'], 3):>16}{fmt(row['prompt_tokens'], 0):>12}"
            f"{fmt(row['cached_tokens'], 0):>8}{fmt(row['completion_tokens'], 0):>16}"
            f"{str(row['valid']) + '/' + str(row['samples']):>8}  "
            f"{','.join(row['finish_reasons'])}"
        )
    print()
    notes = {
        "json_schema/free decode": "1.00 = constraints cost nothing; below 1 slower",
        "tool_call/free decode": "1.00 = constraints cost nothing; below 1 slower",
        "json_schema/free TTFT": "above 1: the constrained request starts later",
        "tool_call/free TTFT": "above 1: the tool call starts later",
    }
    for name, value in ratios.items():
        print(f"{name:<26}{fmt(value):>7}   {notes[name]}")
    print()
    for name, value in summary["first_request"].items():
        print(f"{name:<46}{fmt(value, 3):>8} s")
    if args.logprobs:
        print(
            f"\nper-token chunks matched usage.completion_tokens in "
            f"{summary['timed_tokens_match_usage']}/{summary['requests_with_usage']} requests"
        )
    print(f"({kinds[FREE]['valid']}/{kinds[FREE]['samples']} free answers held a valid object)")


def versions() -> dict[str, str]:
    found = serving_versions()
    for package in ("llguidance", "jsonschema"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_json(
    path: Path,
    summary: dict[str, Any],
    warmups: list[Sample],
    samples: list[Sample],
    **config: Any,
) -> None:
    document = {
        "config": config,
        "versions": versions(),
        **summary,
        "warmups": [asdict(s) for s in warmups],
        "samples": [asdict(s) for s in samples],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--no-logprobs",
        dest="logprobs",
        action="store_false",
        help="time visible chunks instead of one logprobs chunk per token",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds the gateway may take"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds one request may take"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.max_tokens < 2:
        parser.error("--runs must be at least 1 and --max-tokens at least 2")
    return args


def bench(
    args: argparse.Namespace, model_dir: Path
) -> tuple[dict[str, Any], list[Sample], list[Sample], list[Sample]]:
    """Start the gateway, measure, and stop it whatever happens."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-constraints-")))
        port = free_port()
        progress(f"starting gateway on 127.0.0.1:{port} for {model_dir}")
        log = tmp / "gateway.log"
        # Loopback only, so the bench may turn authentication off (the gateway allows
        # that only on loopback).
        env = {
            **os.environ,
            "GATEWAY_MODELS_DEFAULT": model_dir.name,
            "GATEWAY_AUTH_ENABLED": "false",
        }
        stack.enter_context(
            running_server(
                "gateway",
                gateway_cmd(model_dir, port, tmp / "gateway-data"),
                env,
                f"http://127.0.0.1:{port}/ready",
                log,
                args.start_timeout,
            )
        )
        endpoint = make_endpoint("gateway", port, model_dir.name, log, args.request_timeout)
        runner = Bench(endpoint, args)
        warmups, samples = measure(runner, args.runs)
        progress("stopping the gateway")
    return summarize(warmups, samples), warmups, samples, runner.failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = args.model_dir.expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        print(
            f"bench: {model_dir} is not an MLX model directory (no config.json).\n"
            "Start the gateway once to convert the bundled model (docs/models.md), "
            "or pass --model-dir.",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.time()
    try:
        summary, warmups, samples, failures = bench(args, model_dir)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; the gateway was stopped", file=sys.stderr)
        return 130
    print_report(summary, args, model_dir)
    print(f"\n(wall time {time.time() - started:.0f} s)")
    if args.json:
        write_json(
            args.json,
            summary,
            warmups,
            samples,
            model_dir=str(model_dir),
            runs=args.runs,
            max_tokens=args.max_tokens,
            logprobs=args.logprobs,
        )
        print(f"figures written to {args.json}")
    if failures:
        print(
            f"bench: {len(failures)} constrained output(s) did not validate (shown above)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
