"""Entry point of a worker process: ``python -m engine.worker_main``.

The worker starts empty (so a spare one can be kept ready with MLX imported),
receives ``Load``, then serves ``Generate`` and ``Cancel`` until ``Shutdown``
or the end of its input.

Threads: a reader thread decodes frames from stdin into an inbox; the main
thread does every MLX call (MLX streams are thread-local) and is the only
writer of frames.  Between two steps the main thread drains the inbox, so a
cancel stops its generation within one step.  Each step is one turn of the
``WorkerScheduler``: one slice of a prompt being prefilled (``engine.prefill``),
then one decode step of the running generations, batched or in turn
(``engine.decoders``), so a long prompt never stalls the other streams for
longer than a slice.  The worker reports how it serves (``WorkerStats``) when
generations join or leave and about once a second while any run.

A ``Generate`` runs on the tokens the gateway sent when it sent them (checked,
never tokenized again), and reads and writes only the prompt cache of its own
``partition``; ``Load.prompt_cache_size`` bounds each partition's cache.

The protocol uses the process's original stdout; file descriptor 1 is then
pointed at stderr so that a stray ``print`` in a library cannot corrupt the
stream.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from engine.protocol import (
    HEADER,
    Cancel,
    Delta,
    Failed,
    Finished,
    FromWorker,
    Generate,
    Load,
    Loaded,
    LoadFailed,
    LoadProgress,
    Shutdown,
    WorkerStats,
    frame,
    frame_length,
    to_worker_decoder,
)

if TYPE_CHECKING:
    from engine.generation import Generation, ModelRunner
    from engine.worker_scheduler import WorkerScheduler

log = logging.getLogger("engine.worker")

_EOF = object()
PROGRESS_INTERVAL = 1.0
STATS_INTERVAL = 1.0  # seconds between two WorkerStats while generations run


def resident_bytes() -> int:
    """This process's resident memory (Linux: current; elsewhere: peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def read_frames(source: BinaryIO, inbox: queue.Queue[object]) -> None:
    """Reader thread: decode frames into the inbox; the end of input means shut down."""
    try:
        while True:
            header = source.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            body = source.read(frame_length(header))
            inbox.put(to_worker_decoder.decode(body))
    except Exception:  # a broken pipe or a corrupt frame: stop cleanly
        log.exception("worker input failed")
    inbox.put(_EOF)


class Worker:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._inbox: queue.Queue[object] = queue.Queue()
        self._runner: ModelRunner | None = None
        self._scheduler: WorkerScheduler[Generation] | None = None
        self._stats_sent = 0.0
        self._stats_due = False

    def send(self, message: FromWorker) -> None:
        data = frame(message)
        with self._write_lock:  # the load heartbeat writes from its own thread
            self._out.write(data)
            self._out.flush()

    def run(self, source: BinaryIO) -> None:
        threading.Thread(
            target=read_frames, args=(source, self._inbox), name="frames", daemon=True
        ).start()
        import engine.generation  # noqa: F401  (import MLX now: a spare worker is warm)

        while True:
            block = not self._busy
            try:
                while True:
                    message = self._inbox.get(block=block)
                    block = False
                    if not self._handle(message):
                        return
            except queue.Empty:
                pass
            self._advance_all()
            self._report()

    @property
    def _busy(self) -> bool:
        return self._scheduler is not None and self._scheduler.active

    def _handle(self, message: object) -> bool:
        if message is _EOF or isinstance(message, Shutdown):
            return False
        if isinstance(message, Load):
            self._load(message)
        elif isinstance(message, Generate):
            self._start(message)
        elif isinstance(message, Cancel) and self._scheduler is not None:
            generation = self._scheduler.remove(message.req_id)
            if generation is not None:
                self._stats_due = True
                self.send(generation.finish("cancelled"))
        return True

    def _load(self, message: Load) -> None:
        from engine.decoders import choose_decoding
        from engine.generation import ModelRunner
        from engine.worker_scheduler import WorkerScheduler

        loaded = threading.Event()

        def heartbeat() -> None:
            while not loaded.wait(PROGRESS_INTERVAL):
                self.send(LoadProgress(resident_bytes()))

        beat = threading.Thread(target=heartbeat, name="load-progress", daemon=True)
        beat.start()
        try:
            # prompt_cache_size bounds each partition's cache (see PartitionedPromptCache).
            runner = ModelRunner(
                message.model_id, Path(message.model_dir), message.prompt_cache_size
            )
            decoder = choose_decoding(runner, message.decoding)
        except Exception as exc:
            log.exception("load of %s failed", message.model_id)
            self.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
            return
        finally:
            loaded.set()
            beat.join()
        self._runner = runner
        budget = message.kv_budget_tokens or 1 << 62
        self._scheduler = WorkerScheduler(decoder, budget)
        self.send(
            Loaded(
                message.model_id,
                runner.load_seconds,
                resident_bytes(),
                runner.context_length,
                decoder.mode,
                decoder.reason,
                runner.kv_bytes_per_token,
            )
        )

    def _start(self, message: Generate) -> None:
        from engine.generation import InvalidGeneration, PromptTooLong
        from engine.worker_scheduler import KVBudgetExceeded

        if self._runner is None or self._scheduler is None:
            self.send(Failed(message.req_id, "internal", "no model is loaded in this worker"))
            return
        try:
            generation = self._runner.start(message)
        except PromptTooLong as exc:
            self.send(Failed(message.req_id, "context_length_exceeded", str(exc)))
            return
        except InvalidGeneration as exc:
            self.send(Failed(message.req_id, "invalid_request", str(exc)))
            return
        except Exception as exc:
            log.exception("request %d could not start", message.req_id)
            self.send(Failed(message.req_id, "invalid_request", f"{type(exc).__name__}: {exc}"))
            return
        try:
            self._scheduler.add(generation)
        except KVBudgetExceeded as exc:
            self.send(Failed(message.req_id, "context_length_exceeded", str(exc)))
            return
        self._stats_due = True
        self.send(generation.started)

    def _advance_all(self) -> None:
        if not self._busy:
            return
        assert self._scheduler is not None
        for generation, outcome in self._scheduler.step():
            if isinstance(outcome, BaseException):
                traceback.print_exception(outcome)
                self._stats_due = True
                self.send(
                    Failed(
                        generation.req_id,
                        "internal",
                        f"generation failed: {type(outcome).__name__}: {outcome}",
                    )
                )
                continue
            event, done = outcome
            if done:
                self._stats_due = True
            if isinstance(event, Finished) or (
                isinstance(event, Delta)
                and (event.text or event.reasoning or event.calls or event.logprobs)
            ):
                self.send(event)

    def _report(self) -> None:
        """Send ``WorkerStats`` when generations joined or left, or a second passed."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        now = time.monotonic()
        if not self._stats_due and not (
            scheduler.active and now - self._stats_sent >= STATS_INTERVAL
        ):
            return
        from engine.decoders import cache_bytes  # MLX: imported once a model is loaded

        stats = scheduler.stats()
        self.send(
            WorkerStats(
                stats.batch,
                stats.prefilling,
                stats.waiting,
                stats.kv_reserved_tokens,
                scheduler.decoder.kv_bytes()
                + sum(cache_bytes(g.cache) for g in scheduler.prefilling()),
                stats.longest_pause,
            )
        )
        self._stats_sent, self._stats_due = now, False


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("MLX_GATEWAY_WORKER_LOG_LEVEL", "WARNING"),
        format="worker[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    Worker(protocol_out).run(sys.stdin.buffer)
    # The reader thread is still blocked on stdin; finalizing the interpreter under it
    # aborts ("could not acquire lock for <stdin>").  Nothing is left to clean up.
    sys.stderr.flush()
    protocol_out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
