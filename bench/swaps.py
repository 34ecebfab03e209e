"""Swap benchmark: what on-demand loading costs, and how well swaps are batched.

Run from the repository root::

    .venv/bin/python bench/swaps.py [--runs 3] [--json PATH]

Part 1, cold start of an on-disk model (the bundled SmolLM2-135M-Instruct):

``fresh process``
    what a user without the gateway pays: start Python, import mlx-lm, ``load``
    the model and produce the first token of a short chat prompt, timed from
    the process spawn to that first token.
``gateway, spare worker`` / ``gateway, no spare``
    time to first token of a streamed request for the model while another model
    (a tiny one) holds the only slot (``max_loaded_models = 1``): the gateway
    unloads the tiny model, loads SmolLM2 in a worker (the pre-started spare, or
    a newly spawned one) and answers.  The model is unloaded again between runs
    through ``POST /admin/models/{id}/unload``.

Part 2, an alternating workload: two clients, one for each of two tiny models,
each sending sequential requests, with ``max_loaded_models = 1``.  It counts
model loads (swaps) against requests, with ``min_residency = 0`` (swap whenever
the other model waits) and with the default 10 s.

Medians over runs; the prompt is the same everywhere.  Machines are shared and
noisy: read the ratios, not the third decimal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from serving import (
    REPO_ROOT,
    free_port,
    gateway_cmd,
    make_endpoint,
    running_server,
    stream_chat,
)

BUNDLED = "smollm2-135m-instruct"
PROMPT = "What is the capital of France?"

FRESH = """
import sys, time
start = float(sys.argv[2])
from mlx_lm import load, stream_generate
model, tokenizer = load(sys.argv[1])
prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": sys.argv[3]}], add_generation_prompt=True, tokenize=False
)
for response in stream_generate(model, tokenizer, prompt, max_tokens=2):
    print(time.time() - start, flush=True)
    break
"""


def fresh_process_ttft(model_dir: Path) -> float:
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(model_dir), repr(start), PROMPT],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[0])


def models_dir(root: Path) -> Path:
    models = root / "models"
    models.mkdir()
    bundled = REPO_ROOT / ".cache" / "models" / BUNDLED
    if not (bundled / "config.json").is_file():
        sys.exit(f"{bundled} is missing: run the test suite or `make serve` once first")
    (models / BUNDLED).symlink_to(bundled)
    for seed, name in enumerate(("tiny-a", "tiny-b")):
        subprocess.run(
            [sys.executable, "-m", "tests.support.tiny_model", str(models / name), str(seed)],
            cwd=REPO_ROOT,
            check=True,
        )
    return models


def gateway_env(**engine: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_MODELS_DEFAULT"] = "tiny-a"
    env["GATEWAY_AUTH_ENABLED"] = "false"  # loopback only
    env.update({f"GATEWAY_ENGINE_{k.upper()}": str(v).lower() for k, v in engine.items()})
    return env


def admin_state(base: str, model: str) -> dict[str, Any]:
    return httpx.get(f"{base}/admin/models/{model}", timeout=10).json()


def wait_state(base: str, model: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while admin_state(base, model)["state"] != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} did not become {state}")
        time.sleep(0.1)


def gateway_cold_ttft(models: Path, root: Path, runs: int, spare: bool) -> list[float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = gateway_env(max_loaded_models=1, min_residency=0, spare_worker=spare)
    log = root / f"gateway-spare-{spare}.log"
    cmd = gateway_cmd(models / "tiny-a", port, root / f"data-{spare}")
    results = []
    with running_server("gateway", cmd, env, f"{base}/ready", log, 180):
        endpoint = make_endpoint("gateway", port, BUNDLED, log, 300)
        for _ in range(runs):
            httpx.post(f"{base}/admin/models/{BUNDLED}/unload", timeout=10)
            wait_state(base, BUNDLED, "absent")
            httpx.post(f"{base}/admin/models/tiny-a/load", timeout=10)
            wait_state(base, "tiny-a", "ready")
            time.sleep(4)  # let a spare worker finish starting
            figures = stream_chat(endpoint, PROMPT, 2)
            results.append(figures["ttft_s"])
            print(f"  gateway spare={spare}: TTFT {figures['ttft_s']:.2f} s", file=sys.stderr)
    return results


def alternating_loads(models: Path, root: Path, min_residency: float, per_client: int) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = gateway_env(max_loaded_models=1, min_residency=min_residency, load_wait=120)
    log = root / f"gateway-alternating-{min_residency}.log"
    cmd = gateway_cmd(models / "tiny-a", port, root / f"data-alt-{min_residency}")
    with running_server("gateway", cmd, env, f"{base}/ready", log, 180):
        before = sum(admin_state(base, m)["loads"] for m in ("tiny-a", "tiny-b"))

        def client(model: str) -> None:
            endpoint = make_endpoint("gateway", port, model, log, 300)
            for _ in range(per_client):
                stream_chat(endpoint, "hello", 8)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(m,)) for m in ("tiny-a", "tiny-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        loads = sum(admin_state(base, m)["loads"] for m in ("tiny-a", "tiny-b")) - before
    return {"requests": 2 * per_client, "loads": loads, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = models_dir(root)
        fresh = []
        for _ in range(args.runs):
            fresh.append(fresh_process_ttft(models / BUNDLED))
            print(f"  fresh process: TTFT {fresh[-1]:.2f} s", file=sys.stderr)
        spare = gateway_cold_ttft(models, root, args.runs, spare=True)
        nospare = gateway_cold_ttft(models, root, args.runs, spare=False)
        thrash = alternating_loads(models, root, 0.0, args.per_client)
        batched = alternating_loads(models, root, 10.0, args.per_client)

    med = {
        k: statistics.median(v)
        for k, v in {"fresh": fresh, "spare": spare, "nospare": nospare}.items()
    }
    print(f"cold start of {BUNDLED} (median of {args.runs}), time to first token:")
    print(f"  fresh process (spawn, import, load, first token)  {med['fresh']:6.2f} s")
    print(f"  gateway swap, spare worker                        {med['spare']:6.2f} s")
    print(f"  gateway swap, no spare worker                     {med['nospare']:6.2f} s")
    print(f"  gateway(spare) / fresh process                    {med['spare'] / med['fresh']:6.2f}")
    print(
        f"  spare worker saves                                "
        f"{med['nospare'] - med['spare']:6.2f} s"
    )
    print("alternating A/B clients, max_loaded_models = 1:")
    for name, row in (("min_residency 0", thrash), ("min_residency 10", batched)):
        print(
            f"  {name:18} {row['requests']} requests, {row['loads']} loads, "
            f"{row['loads'] / row['requests']:.2f} loads/request, {row['seconds']:.1f} s"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "fresh": fresh,
                    "spare": spare,
                    "nospare": nospare,
                    "medians": med,
                    "min_residency_0": thrash,
                    "min_residency_10": batched,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
