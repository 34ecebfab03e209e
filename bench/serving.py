"""Serving benchmark: mlx-lm in-process vs ``mlx_lm.server`` vs the gateway, in one run.

Run from the repository root::

    .venv/bin/python bench/serving.py [--model-dir DIR] [--runs 3] [--max-tokens 64]
                                      [--json PATH]

Three systems serve the same model directory, with greedy decoding (temperature 0),
the same chat prompts and the same ``max_tokens``:

``direct``
    mlx-lm's ``stream_generate`` called in-process, in a spawned child of the bench
    (the bench itself never imports MLX).  The chat template is applied as the
    servers do.  This is the ceiling: no HTTP, no queueing, no worker protocol.
``mlx_lm.server``
    ``python -m mlx_lm server --model DIR`` (mlx-lm's own HTTP server), streamed
    through the official ``openai`` SDK.
``gateway``
    ``python -m gateway serve --models-dir PARENT`` with the model as its default,
    streamed with the same client code as ``mlx_lm.server``.

All three are started first (one after the other) and stay up; they are idle when
not measured, and only one of them generates at any time.  Each run uses its own
"cold" prompt (``Run N. ...``, never seen before by any server) and visits the
systems in a rotating order.  For each server a run sends the cold prompt, then
the very same prompt again ("repeated"), which the servers' prompt caches can
answer without re-processing the prompt.  Every system first gets one unmeasured
warm-up request.

Figures (medians over runs):

decode tok/s
    Completion tokens after the first, divided by the time from the first to the
    last content chunk (for ``direct``: from the first to the last generated
    token).  Tokens come from the stream's usage chunk, or are counted as content
    chunks when a server sends no usage.  For the servers the median covers both
    the cold and the repeated requests: decoding does not depend on the cache.
TTFT cold / repeated (s)
    Time to first token: from sending the request to the first non-empty content
    chunk (for ``direct``: from the call, chat templating included, to the first
    generated token).  ``direct`` has no prompt cache, so it has no repeated figure.

Ratios: ``gateway/direct`` and ``gateway/mlx_lm.server`` decode speed (1.00 means
as fast, below 1 slower); repeated and cold TTFT ``gateway/mlx_lm.server`` (below
1 means the gateway answers sooner); ``cold/repeated`` TTFT for each server (how
much the prompt cache saves: higher is better).

The bench also says whether the greedy outputs agreed across systems and how many
prompt and completion tokens each one counted, so a figure that differs because
the work differed (another chat template, an early stop) is visible.  Nothing is
asserted: the figures are measurements of this machine at this moment, and other
load on it shows up in them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from openai import OpenAI

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = Path(".cache/models/smollm2-135m-instruct")

DIRECT = "direct"
SERVER = "mlx_lm.server"
GATEWAY = "gateway"
SYSTEMS = (DIRECT, SERVER, GATEWAY)

# Prefill on a CPU build of MLX runs barely faster than decoding (~11 tokens/s for the
# bundled 4-bit model), so the prompt is kept short: ~100 tokens with the template.
STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "Notes: the keeper has lived alone on a rocky island for eleven winters; the "
    "message is from a child who asks whether anyone is out there; a storm is coming. "
    "Keep the tone quiet and warm, and end with the keeper lighting the lamp at dusk."
)
WARMUP_PROMPT = "Warm-up request. Say hello in one short sentence."


class BenchError(RuntimeError):
    """Something the bench could not measure; the message says what and shows logs."""


@dataclass
class Sample:
    """One measured request."""

    system: str
    run: int
    kind: str  # "cold" or "repeated"
    ttft_s: float | None
    decode_tps: float | None
    completion_tokens: int
    prompt_tokens: int | None
    total_s: float
    text: str
    content_chunks: int  # streamed pieces of text (direct: generated tokens)
    mlx_generation_tps: float | None = None  # direct only: mlx-lm's own figure


def cold_prompt(run: int) -> str:
    """The prompt of one run: unique by its first words, the same for every system."""
    return f"Run {run}. {STORY}"


# --------------------------------------------------------------------------- direct


def direct_worker(model_dir: str, conn: Connection) -> None:
    """Child process: load the model, then answer ``(prompt, max_tokens)`` until ``None``."""
    import traceback

    try:
        from mlx_lm import load
        from mlx_lm.sample_utils import make_sampler

        loaded = load(model_dir)
        model, tokenizer = loaded[0], loaded[1]
        sampler = make_sampler(temp=0.0)
        conn.send({"ready": True})
    except Exception:
        conn.send({"error": traceback.format_exc()})
        return
    while (job := conn.recv()) is not None:
        try:
            conn.send(direct_generate(model, tokenizer, sampler, *job))
        except Exception:
            conn.send({"error": traceback.format_exc()})


def direct_generate(
    model: Any, tokenizer: Any, sampler: Any, prompt: str, max_tokens: int
) -> dict[str, Any]:
    """Greedy ``stream_generate`` of one chat prompt, timed per generated token."""
    from mlx_lm import stream_generate

    start = time.perf_counter()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    stamps: list[float] = []
    pieces: list[str] = []
    last = None
    for last in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        stamps.append(time.perf_counter())
        pieces.append(last.text)
    end = time.perf_counter()
    if last is not None and last.finish_reason == "stop":
        stamps.pop()  # the final response carries the end-of-sequence token
    return {
        "ttft_s": stamps[0] - start if stamps else None,
        "decode_tps": rate(len(stamps), stamps[0], stamps[-1]) if stamps else None,
        "completion_tokens": len(stamps),
        "prompt_tokens": len(ids),
        "total_s": end - start,
        "text": "".join(pieces),
        "content_chunks": len(stamps),
        "mlx_generation_tps": last.generation_tps if last is not None else None,
    }


class DirectRunner:
    """The in-process baseline, run in a spawned child that keeps the model loaded."""

    def __init__(self, model_dir: Path, timeout: float) -> None:
        self.timeout = timeout
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(
            target=direct_worker, args=(str(model_dir), child_conn), name="bench-direct"
        )
        self.proc.start()
        child_conn.close()

    def receive(self, waiting_for: str) -> dict[str, Any]:
        if not self.conn.poll(self.timeout):
            raise BenchError(f"direct: no {waiting_for} within {self.timeout:.0f} s")
        try:
            reply: dict[str, Any] = self.conn.recv()
        except EOFError as exc:
            self.proc.join(1)
            raise BenchError(f"direct: worker died (exit code {self.proc.exitcode})") from exc
        if "error" in reply:
            raise BenchError(f"direct: {waiting_for} failed:\n{reply['error']}")
        return reply

    def wait_ready(self) -> None:
        self.receive("model load")

    def generate(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        self.conn.send((prompt, max_tokens))
        return self.receive("generation")

    def close(self) -> None:
        with suppress(OSError):
            if self.proc.is_alive():
                self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@contextmanager
def direct_runner(model_dir: Path, timeout: float) -> Iterator[DirectRunner]:
    runner = DirectRunner(model_dir, timeout)
    try:
        runner.wait_ready()
        yield runner
    finally:
        runner.close()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text[-lines:]) or "(empty log)"


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every live descendant of ``pid`` (Linux ``/proc``; else none).

    The gateway starts its workers in their own sessions, so killing its process
    group does not reach them; the bench remembers them to make sure they end.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        started = _proc_start_time(child)
        if started is not None:
            found.append((child, started))
        todo.extend(children.get(child, []))
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` s, then any leftover child."""
    leftovers = descendants(proc.pid)
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)  # anything left in the group
    deadline = time.monotonic() + 5
    for pid, started in leftovers:
        while _proc_start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.1)
        if _proc_start_time(pid) == started:
            os.kill(pid, signal.SIGKILL)


def wait_ready(
    name: str, proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> None:
    """Poll ``url`` until it answers 200; fail with the log tail if the process exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with code {proc.returncode} before it was ready.\n"
                f"--- log tail ({log}) ---\n{log_tail(log)}"
            )
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise BenchError(
        f"{name} was not ready within {timeout:.0f} s (GET {url}: {last}).\n"
        f"--- log tail ({log}) ---\n{log_tail(log)}"
    )


@contextmanager
def running_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    log: Path,
    timeout: float,
    cwd: Path = REPO_ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` in its own process group, wait for ``ready_url``, always stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(name, proc, ready_url, log, timeout)
        yield proc
    finally:
        stop_process(proc)


def mlx_server_cmd(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlx_lm",
        "server",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def gateway_cmd(model_dir: Path, port: int, data_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models-dir",
        str(model_dir.parent),
        "--data-dir",
        str(data_dir),
    ]


# --------------------------------------------------------------------------- HTTP clients


@dataclass
class Endpoint:
    """A running OpenAI-compatible server and the client that measures it."""

    name: str
    client: OpenAI
    model: str
    log: Path


def make_endpoint(name: str, port: int, model: str, log: Path, timeout: float) -> Endpoint:
    from openai import OpenAI

    client = OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=timeout
    )
    return Endpoint(name, client, model, log)


def rate(tokens: int, first: float, last: float) -> float | None:
    """Tokens per second after the first token, or ``None`` when undefined."""
    if tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)


def stream_chat(endpoint: Endpoint, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed, greedy chat completion, timed per content chunk."""
    start = time.perf_counter()
    stream = endpoint.client.chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first: float | None = None
    last = start
    chunks = 0
    pieces: list[str] = []
    usage = None
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                first = now if first is None else first
                last = now
                chunks += 1
                pieces.append(choice.delta.content)
    end = time.perf_counter()
    tokens = usage.completion_tokens if usage is not None else chunks
    return {
        "ttft_s": None if first is None else first - start,
        "decode_tps": None if first is None else rate(tokens, first, last),
        "completion_tokens": tokens,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "total_s": end - start,
        "text": "".join(pieces),
        "content_chunks": chunks,
    }


def request_server(endpoint: Endpoint, prompt: str, max_tokens: int) -> dict[str, Any]:
    """``stream_chat``, turning any failure into a ``BenchError`` with the server's log."""
    try:
        return stream_chat(endpoint, prompt, max_tokens)
    except Exception as exc:
        raise BenchError(
            f"{endpoint.name}: POST /v1/chat/completions failed: {exc!r}\n"
            f"request: model={endpoint.model!r} max_tokens={max_tokens} temperature=0 "
            f"seed=0 stream=True stream_options.include_usage=True prompt={prompt[:60]!r}...\n"
            f"--- log tail ({endpoint.log}) ---\n{log_tail(endpoint.log)}"
        ) from exc


# --------------------------------------------------------------------------- measuring


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_sample(system: str, run: int, kind: str, figures: dict[str, Any]) -> Sample:
    sample = Sample(system=system, run=run, kind=kind, **figures)
    progress(
        f"  run {run} {system:<14} {kind:<8} TTFT {fmt(sample.ttft_s, 3)} s, "
        f"{sample.completion_tokens} tokens, {fmt(sample.decode_tps)} tok/s"
    )
    return sample


def measure_direct(runner: DirectRunner, run: int, prompt: str, max_tokens: int) -> list[Sample]:
    return [to_sample(DIRECT, run, "cold", runner.generate(prompt, max_tokens))]


def measure_server(endpoint: Endpoint, run: int, prompt: str, max_tokens: int) -> list[Sample]:
    cold = to_sample(endpoint.name, run, "cold", request_server(endpoint, prompt, max_tokens))
    again = to_sample(endpoint.name, run, "repeated", request_server(endpoint, prompt, max_tokens))
    return [cold, again]


def run_order(run: int) -> tuple[str, ...]:
    """The systems in a rotating order, so none always goes first."""
    shift = (run - 1) % len(SYSTEMS)
    return SYSTEMS[shift:] + SYSTEMS[:shift]


def measure(
    runner: DirectRunner, endpoints: dict[str, Endpoint], runs: int, max_tokens: int
) -> list[Sample]:
    progress("warming up (unmeasured)")
    runner.generate(WARMUP_PROMPT, min(8, max_tokens))
    for endpoint in endpoints.values():
        request_server(endpoint, WARMUP_PROMPT, min(8, max_tokens))
    samples: list[Sample] = []
    for run in range(1, runs + 1):
        prompt = cold_prompt(run)
        for system in run_order(run):
            if system == DIRECT:
                samples += measure_direct(runner, run, prompt, max_tokens)
            else:
                samples += measure_server(endpoints[system], run, prompt, max_tokens)
    return samples


# --------------------------------------------------------------------------- summary


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def summarize_system(samples: list[Sample], system: str) -> dict[str, float | None]:
    mine = [s for s in samples if s.system == system]
    cold = [s for s in mine if s.kind == "cold"]
    repeated = [s for s in mine if s.kind == "repeated"]
    return {
        "decode_tps": median([s.decode_tps for s in mine]),
        "ttft_cold_s": median([s.ttft_s for s in cold]),
        "ttft_repeated_s": median([s.ttft_s for s in repeated]),
        "completion_tokens": median([float(s.completion_tokens) for s in mine]),
        "prompt_tokens": median([s.prompt_tokens for s in mine]),
    }


def summarize(samples: list[Sample]) -> dict[str, Any]:
    systems = {name: summarize_system(samples, name) for name in SYSTEMS}
    d, s, g = systems[DIRECT], systems[SERVER], systems[GATEWAY]
    ratios = {
        "gateway/direct decode": ratio(g["decode_tps"], d["decode_tps"]),
        "gateway/mlx_lm.server decode": ratio(g["decode_tps"], s["decode_tps"]),
        "gateway/mlx_lm.server TTFT repeated": ratio(g["ttft_repeated_s"], s["ttft_repeated_s"]),
        "gateway/mlx_lm.server TTFT cold": ratio(g["ttft_cold_s"], s["ttft_cold_s"]),
        "mlx_lm.server cold/repeated TTFT": ratio(s["ttft_cold_s"], s["ttft_repeated_s"]),
        "gateway cold/repeated TTFT": ratio(g["ttft_cold_s"], g["ttft_repeated_s"]),
    }
    return {"systems": systems, "ratios": ratios, "agreement": agreement(samples)}


def agreement(samples: list[Sample]) -> dict[str, Any]:
    """Whether the greedy outputs of a run were the same text on every system."""
    runs = sorted({s.run for s in samples})
    same = [run for run in runs if len({s.text for s in samples if s.run == run}) == 1]
    return {"runs": len(runs), "identical_runs": len(same)}


def print_report(summary: dict[str, Any], args: argparse.Namespace, model_dir: Path) -> None:
    systems, ratios = summary["systems"], summary["ratios"]
    print()
    print(f"model {model_dir}  runs {args.runs}  max_tokens {args.max_tokens}  (medians)")
    header = f"{'system':<15}{'decode tok/s':>13}{'TTFT cold s':>13}{'TTFT repeated s':>17}"
    header += f"{'cold/repeated':>15}{'prompt tok':>12}{'completion tok':>16}"
    print(header)
    print("-" * len(header))
    for name, row in systems.items():
        speedup = ratio(row["ttft_cold_s"], row["ttft_repeated_s"])
        print(
            f"{name:<15}{fmt(row['decode_tps']):>13}{fmt(row['ttft_cold_s'], 3):>13}"
            f"{fmt(row['ttft_repeated_s'], 3):>17}"
            f"{(fmt(speedup) + 'x') if speedup else '-':>15}"
            f"{fmt(row['prompt_tokens'], 0):>12}{fmt(row['completion_tokens'], 0):>16}"
        )
    print()
    notes = {
        "gateway/direct decode": "1.00 = as fast as in-process mlx-lm",
        "gateway/mlx_lm.server decode": "above 1: gateway decodes faster",
        "gateway/mlx_lm.server TTFT repeated": "below 1: gateway answers sooner",
        "gateway/mlx_lm.server TTFT cold": "below 1: gateway answers sooner",
        "mlx_lm.server cold/repeated TTFT": "what its prompt cache saves",
        "gateway cold/repeated TTFT": "what its prompt cache saves",
    }
    for name, value in ratios.items():
        print(f"{name:<38}{fmt(value):>7}   {notes[name]}")
    agree = summary["agreement"]
    print(
        f"\ngreedy outputs identical on all systems in {agree['identical_runs']}"
        f"/{agree['runs']} runs"
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("mlx", "mlx-lm", "openai", "mlx-gateway"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_json(path: Path, summary: dict[str, Any], samples: list[Sample], **config: Any) -> None:
    document = {
        "config": config,
        "versions": versions(),
        **summary,
        "samples": [asdict(s) for s in samples],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def run_args(doc: str | None, argv: list[str] | None, max_tokens: int) -> argparse.Namespace:
    """The options of a bench that runs servers on one model: ``--model-dir``,
    ``--runs``, ``--max-tokens``, ``--json``, ``--start-timeout``, ``--request-timeout``."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n", 1)[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds a server may take to be ready"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds one request may take"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.max_tokens < 2:
        parser.error("--runs must be at least 1 and --max-tokens at least 2")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return run_args(__doc__, argv, max_tokens=64)


def bench(args: argparse.Namespace, model_dir: Path) -> tuple[dict[str, Any], list[Sample]]:
    """Start the three systems, measure, and stop everything whatever happens."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        progress(f"starting direct (mlx-lm in a child process) on {model_dir}")
        runner = stack.enter_context(direct_runner(model_dir, args.request_timeout))

        port = free_port()
        progress(f"starting mlx_lm.server on 127.0.0.1:{port}")
        log = tmp / "mlx_lm.server.log"
        env = dict(os.environ)
        stack.enter_context(
            running_server(
                SERVER,
                mlx_server_cmd(model_dir, port),
                env,
                f"http://127.0.0.1:{port}/health",
                log,
                args.start_timeout,
            )
        )
        server = make_endpoint(SERVER, port, str(model_dir), log, args.request_timeout)

        port = free_port()
        progress(f"starting gateway on 127.0.0.1:{port}")
        log = tmp / "gateway.log"
        # Loopback only, so the bench may turn authentication off (the gateway allows
        # that only on loopback); a key lookup per request would not change the figures.
        env = {
            **os.environ,
            "GATEWAY_MODELS_DEFAULT": model_dir.name,
            "GATEWAY_AUTH_ENABLED": "false",
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
        gateway = make_endpoint(GATEWAY, port, model_dir.name, log, args.request_timeout)

        samples = measure(runner, {SERVER: server, GATEWAY: gateway}, args.runs, args.max_tokens)
        progress("stopping servers")
    return summarize(samples), samples


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: servers get stopped


R = TypeVar("R")


def run_guarded(work: Callable[[], R]) -> tuple[R | None, int]:
    """Run a bench's measurements: SIGTERM unwinds them (the servers get stopped); a
    ``BenchError`` or Ctrl-C ends with a message.  The result, and the exit code."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return work(), 0
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return None, 130


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
        )
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
