"""The two ways a worker decodes its running generations, and the choice between them.

``InterleavedDecoder`` advances each generation by one token in turn, each with
its own mlx-lm ``generate_step``.  ``BatchedDecoder`` decodes them all as one
batch with mlx-lm's ``BatchGenerator`` (continuous batching: generations join
and leave between steps), each with its own sampler, logits processors (penalties,
``logit_bias``, the output constraint) and ``max_tokens``; stop strings, text,
reasoning, tool calls and logprobs are each ``Generation``'s own in both modes,
so the two modes give the same output for the same tokens.

Whether batching pays depends on the backend: on a GPU one forward pass of four
sequences costs little more than one of a single sequence; on a CPU it can cost
four times as much.  ``choose_decoding`` decides per model at load: by the
configuration, or (``auto``) by timing a few decode steps of one sequence and of
a batch, and says why.  Everything here runs on the worker's MLX thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models.cache import make_prompt_cache

from engine.generation import Generation, ModelRunner
from engine.protocol import Finished
from engine.worker_scheduler import Outcome

BATCH_WIDTH = 4  # the batch measured against one sequence at load
BATCH_GAIN = 1.5  # batched when a batch decodes at least this many times the tokens/s
PROBE_STEPS = 3


class InterleavedDecoder:
    """One token of each generation in turn (``generate_step`` per generation)."""

    def __init__(self, runner: ModelRunner, reason: str) -> None:
        self.mode = "interleaved"
        self.reason = reason
        self._runner = runner
        self._steps: dict[int, tuple[Generation, Iterator[tuple[Any, mx.array]]]] = {}

    def join(self, seq: Generation) -> None:
        steps = generate_step(
            mx.array(seq.first),
            self._runner.model,
            self._runner.stream,
            max_tokens=seq.max_tokens,
            sampler=seq.sampler,
            logits_processors=seq.processors,
            prompt_cache=seq.cache,
        )
        self._steps[seq.req_id] = (seq, steps)

    def leave(self, seq: Generation) -> None:
        entry = self._steps.pop(seq.req_id, None)
        if entry is not None:
            entry[1].close()  # type: ignore[attr-defined]
            seq.keep(seq.cache)

    def step(self) -> Iterator[tuple[Generation, Outcome]]:
        for seq, steps in list(self._steps.values()):
            try:
                token, distribution = next(steps)
                event = seq.accept(int(token), distribution)
            except Exception as exc:  # noqa: BLE001 (ends this generation alone)
                yield seq, exc
                continue
            yield seq, (event, event_is_final(event))

    def kv_bytes(self) -> int:
        return sum(cache_bytes(seq.cache) for seq, _ in self._steps.values())


class BatchedDecoder:
    """Every joined generation decoded as one batch (mlx-lm's ``BatchGenerator``)."""

    def __init__(self, runner: ModelRunner, reason: str) -> None:
        self.mode = "batched"
        self.reason = reason
        self._runner = runner
        eos = sorted(runner.tokenizer.eos_token_ids)
        self._batch = BatchGenerator(
            runner.model,
            stop_tokens=[[t] for t in eos],
            completion_batch_size=1024,  # the registry bounds the batch
            prefill_batch_size=8,
            stream=runner.stream,
        )
        self._by_uid: dict[int, Generation] = {}
        self._uid_of: dict[int, int] = {}
        self._errors: dict[int, BaseException] = {}
        self._final_caches: dict[int, list[Any]] = {}

    def join(self, seq: Generation) -> None:
        (uid,) = self._batch.insert(
            [seq.first],
            max_tokens=[seq.max_tokens],
            caches=[seq.cache],
            samplers=[seq.sampler],
            logits_processors=[[self._guarded(seq, p) for p in seq.processors]],
        )
        self._by_uid[uid] = seq
        self._uid_of[seq.req_id] = uid

    def _guarded(
        self, seq: Generation, processor: Callable[[mx.array, mx.array], mx.array]
    ) -> Callable[[mx.array, mx.array], mx.array]:
        """A processor whose failure ends its own generation, not the whole batch."""

        def run(tokens: mx.array, logits: mx.array) -> mx.array:
            if seq.req_id in self._errors:
                return logits
            try:
                return processor(tokens, logits)
            except Exception as exc:  # noqa: BLE001
                self._errors[seq.req_id] = exc
                return logits

        return run

    def leave(self, seq: Generation) -> None:
        uid = self._uid_of.pop(seq.req_id, None)
        self._errors.pop(seq.req_id, None)
        if uid is None:
            return
        self._by_uid.pop(uid, None)
        cache = self._final_caches.pop(uid, None)
        if cache is None:  # still in the batch: a stop string, a cancel or a failure
            extracted = self._batch.remove([uid], return_prompt_caches=True).get(uid)
            cache = extracted[0] if extracted else None
        if cache is not None:
            seq.keep(cache)

    def step(self) -> Iterator[tuple[Generation, Outcome]]:
        if not self._by_uid:
            return
        for response in self._batch.next_generated():
            seq = self._by_uid.get(response.uid)
            if seq is None:
                continue
            if response.finish_reason is not None and response.prompt_cache is not None:
                self._final_caches[response.uid] = response.prompt_cache
            error = self._errors.get(seq.req_id)
            if error is not None:
                yield seq, error
                continue
            try:
                event = seq.accept(int(response.token), response.logprobs)
                if response.finish_reason is not None and not event_is_final(event):
                    # The batch dropped it (its end of turn or max_tokens, which the
                    # generation counts the same way): end it here too, never leave
                    # it waiting for a token that cannot come.
                    event = seq.finish(response.finish_reason)
            except Exception as exc:  # noqa: BLE001
                yield seq, exc
                continue
            yield seq, (event, event_is_final(event))

    def kv_bytes(self) -> int:
        return int(self._batch.prompt_cache_nbytes)


def event_is_final(event: object) -> bool:
    return isinstance(event, Finished)


def cache_bytes(cache: list[Any]) -> int:
    return sum(int(getattr(c, "nbytes", 0)) for c in cache)


Decoding = InterleavedDecoder | BatchedDecoder


def batch_speedup(runner: ModelRunner, width: int = BATCH_WIDTH, steps: int = PROBE_STEPS) -> float:
    """How many times the tokens per second of one sequence a batch of ``width``
    decodes, from a few greedy decode steps of each (no prompt to prefill)."""

    def seconds(batch: int) -> float:
        cache = make_prompt_cache(runner.model)
        y = mx.random.randint(0, runner.vocab_size, (batch,))
        started = 0.0
        with mx.stream(runner.stream):
            for i in range(steps + 1):  # the first step warms up
                if i == 1:
                    started = time.perf_counter()
                y = mx.argmax(runner.model(y[:, None], cache=cache)[:, -1, :], axis=-1)
                mx.eval(y)
        mx.clear_cache()
        return time.perf_counter() - started

    one = seconds(1)
    many = seconds(width)
    return width * one / many if many > 0 else 1.0


def choose_decoding(runner: ModelRunner, setting: str) -> Decoding:
    """The decoder of a freshly loaded model: ``setting`` is ``batched``,
    ``interleaved`` or ``auto`` (measure)."""
    if setting == "interleaved":
        return InterleavedDecoder(runner, "configured (decoding = interleaved)")
    unbatchable = sorted(
        {type(c).__name__ for c in make_prompt_cache(runner.model) if not hasattr(c, "merge")}
    )
    if unbatchable:
        return InterleavedDecoder(
            runner, f"its KV cache ({', '.join(unbatchable)}) cannot be batched"
        )
    if setting == "batched":
        return BatchedDecoder(runner, "configured (decoding = batched)")
    device = str(mx.default_device().type).rsplit(".", 1)[-1]
    gain = batch_speedup(runner)
    measured = (
        f"a batch of {BATCH_WIDTH} decoded {gain:.2f}x the tokens per second of one "
        f"sequence on the {device} (measured at load)"
    )
    if gain >= BATCH_GAIN:
        return BatchedDecoder(runner, measured)
    return InterleavedDecoder(runner, f"{measured}: below {BATCH_GAIN}x, so one token each in turn")
