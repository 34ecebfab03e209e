"""Download throughput: the gateway's download path against ``cp`` of the same files.

Run from the repository root::

    .venv/bin/python bench/downloads.py [--size-mb 256] [--runs 3]

A local hub (``tests/support/local_hub.py``, the same one the tests use)
serves a repo with one large safetensors file and the small model files, on
loopback.  Three ways to put those files on disk, in one run:

``cp``
    ``cp -r`` of the repo's directory: the floor, a local copy.
``huggingface_hub``
    plain ``hf_hub_download`` of every file into a fresh cache: the client alone.
``gateway``
    the gateway's ``engine.downloads.Downloader`` job into a fresh cache: the
    same client plus the gateway's metadata read, progress accounting and the
    cancel, budget and free-space checks on every chunk.

Medians over runs, in MB/s, and the ratio gateway / cp and gateway / client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

REPO = "bench/big-model"


def make_repo(root: Path, size_mb: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "config.json").write_text('{"model_type": "llama"}')
    (repo / "tokenizer.json").write_text("{}")
    with (repo / "model.safetensors").open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1024 * 1024))
    return repo


def total_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_cp(repo: Path, root: Path, run: int) -> float:
    target = root / f"cp-{run}"
    started = time.perf_counter()
    subprocess.run(["cp", "-r", str(repo), str(target)], check=True)
    os.sync()
    return time.perf_counter() - started


def time_client(endpoint: str, root: Path, run: int, files: list[str]) -> float:
    from huggingface_hub import hf_hub_download

    cache = root / f"client-{run}"
    started = time.perf_counter()
    for name in files:
        hf_hub_download(REPO, name, cache_dir=cache, endpoint=endpoint, token=False)
    os.sync()
    return time.perf_counter() - started


def time_gateway(endpoint: str, root: Path, run: int) -> float:
    from engine.downloads import DiskBudget, Downloader, JobState, fetch_plan, free_space

    cache = root / f"gateway-{run}"
    cache.mkdir()
    disk = DiskBudget(10**13, 0, used=lambda: 0, free=lambda: free_space(cache))

    async def pull() -> float:
        started = time.perf_counter()
        plan = await asyncio.to_thread(fetch_plan, REPO, "main", endpoint=endpoint)
        downloader = Downloader(cache, disk, endpoint=endpoint)
        job, _ = downloader.start(plan, "bench")
        await job.done.wait()
        if job.state is not JobState.DONE:
            raise RuntimeError(job.error)
        os.sync()
        return time.perf_counter() - started

    return asyncio.run(pull())


HUB = """
import sys
from pathlib import Path
from tests.support.local_hub import LocalHub
hub = LocalHub().start()
hub.add_repo(sys.argv[1], Path(sys.argv[2]))
print(hub.endpoint, flush=True)
sys.stdin.read()
hub.stop()
"""


def start_hub(repo: Path) -> tuple[subprocess.Popen[str], str]:
    """The local hub in its own process, so it does not share the client's GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HUB, REPO, str(repo)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / ".cache") as tmp:
        root = Path(tmp)
        repo = make_repo(root, args.size_mb)
        hub, endpoint = start_hub(repo)
        size = total_bytes(repo)
        files = [p.name for p in repo.iterdir()]
        times: dict[str, list[float]] = {"cp": [], "huggingface_hub": [], "gateway": []}
        for run in range(args.runs):
            times["cp"].append(time_cp(repo, root, run))
            times["huggingface_hub"].append(time_client(endpoint, root, run, files))
            times["gateway"].append(time_gateway(endpoint, root, run))
            for name in ("cp", "client", "gateway"):
                shutil.rmtree(root / f"{name}-{run}", ignore_errors=True)
            print(
                f"  run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                file=sys.stderr,
            )
    rate = {k: size / statistics.median(v) / 1e6 for k, v in times.items()}
    print(f"{size / 1e6:.0f} MB from a loopback hub, median of {args.runs} runs:")
    for name, mbps in rate.items():
        print(f"  {name:16} {mbps:8.1f} MB/s   ({statistics.median(times[name]):.2f} s)")
    print(f"  gateway / cp               {rate['gateway'] / rate['cp']:.2f}")
    print(f"  gateway / huggingface_hub  {rate['gateway'] / rate['huggingface_hub']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
