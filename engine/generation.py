"""MLX generation inside a worker process (with ``engine.guidance``, the only engine
modules that import MLX).

``ModelRunner`` owns one loaded model, its tokenizer, the prompt caches of recent
prompts (``PartitionedPromptCache``: one bounded LRU per partition, so callers of
different partitions never share a cached prefix) and the MLX stream.
``Generation`` is one request's state: its prompt fed in slices, then each token a
decoder of ``engine.decoders`` produced (batched or in turn) taken in, so a
cancel takes effect within one step.  Each token's text goes
through the stop strings, then ``OutputSplitter`` (answer, reasoning, tool
calls); a constraint masks the logits (``engine.guidance``); logprobs are read
from the distribution the sampler draws from: after penalties, ``logit_bias``
and the constraint's mask, before temperature and top-p.

Every method here must run on the worker's single MLX thread.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import msgspec
from mlx_lm import load as mlx_load
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import apply_top_k, apply_top_p, make_logits_processors, make_sampler

from engine.chat import ToolsNotSupported, chat_tokens, native_tool_format, tool_dicts
from engine.constraints import UnsupportedConstraint, grammar_of
from engine.guidance import GrammarFailed, Guide
from engine.memory import kv_cache_bytes
from engine.outputs import OutputSplitter, Pieces, Thinking
from engine.prefill import Prefill, PrefillPace
from engine.protocol import (
    Delta,
    Finished,
    Generate,
    SamplingParams,
    Started,
    TokenLogprob,
    TopLogprob,
)
from engine.stops import StopMatcher
from engine.tool_formats import FORCED


class InvalidGeneration(ValueError):
    """The request cannot run on this model (the message says why)."""


class PromptTooLong(InvalidGeneration):
    """The prompt leaves no room in the model's context for a single token."""


def seeded_sampler(
    temperature: float, top_p: float, top_k: int, seed: int
) -> Callable[[mx.array], mx.array]:
    """A sampler with its own random key, so a seed reproduces a result even
    while other requests interleave with this one."""
    key = mx.random.key(seed % 2**64)  # any integer: a negative one too

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, sub = mx.random.split(key)
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        if top_k > 0:
            logprobs = apply_top_k(logprobs, top_k)
        return mx.random.categorical(logprobs * (1 / temperature), key=sub)

    return sample


def repetition_penalty(params: SamplingParams) -> float | None:
    """The repetition penalty to apply, or ``None`` when it is off: 0 or 1, a
    context of no tokens (mlx-lm would read ``tokens[-0:]`` as all of them), or a
    value mlx-lm would refuse (negative, not finite), so no request can crash the
    worker with it."""
    penalty = params.repetition_penalty
    if not math.isfinite(penalty) or penalty <= 0.0 or penalty == 1.0:
        return None
    return penalty if params.repetition_context_size > 0 else None


def make_token_sampler(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    if params.temperature <= 0:
        return make_sampler(0.0)
    if params.seed is not None:
        return seeded_sampler(params.temperature, params.top_p, params.top_k, params.seed)
    top_p = params.top_p if params.top_p < 1 else 0.0
    return make_sampler(params.temperature, top_p=top_p, top_k=params.top_k)


MAX_PARTITIONS = 64


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


TOTAL_FACTOR = 4  # all partitions together keep at most this many times max_size entries


class PartitionedPromptCache:
    """Prompt caches kept apart by partition (an API key, or a group of keys).

    A request fetches from and inserts into its own partition's cache only, so
    two partitions never share a cached prefix: neither ``cached_tokens`` nor the
    time to first token tells one caller anything about another's prompts.  Each
    partition is its own LRU of ``max_size`` entries, so one partition's traffic
    evicts only its own entries; beyond ``max_partitions`` partitions, or beyond
    ``TOTAL_FACTOR * max_size`` entries in all, the least recently used partition
    is dropped whole, so memory stays within a few times what one shared cache
    held.  The empty string is a partition like any other.
    """

    def __init__(self, model_id: str, max_size: int, max_partitions: int = MAX_PARTITIONS) -> None:
        self.model_id = model_id
        self.max_size = max_size
        self.max_partitions = max_partitions
        self._partitions: OrderedDict[str, LRUPromptCache] = OrderedDict()

    def __len__(self) -> int:
        """The number of partitions kept."""
        return len(self._partitions)

    def entries(self, partition: str) -> int:
        cache = self._partitions.get(partition)
        return 0 if cache is None else len(cache)

    def fetch(self, partition: str, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        """The nearest cached prefix of ``tokens`` in ``partition`` and the tokens left."""
        cache = self._partitions.get(partition)
        if cache is None:
            return None, tokens
        self._partitions.move_to_end(partition)
        return cache.fetch_nearest_cache(self.model_id, tokens)

    def insert(self, partition: str, tokens: list[int], kv_cache: list[Any]) -> None:
        if self.max_size <= 0 or self.max_partitions <= 0:
            return
        cache = self._partitions.get(partition)
        if cache is None:
            cache = self._partitions[partition] = LRUPromptCache(max_size=self.max_size)
            while len(self._partitions) > self.max_partitions:
                self._partitions.popitem(last=False)
        else:
            self._partitions.move_to_end(partition)
        cache.insert_cache(self.model_id, tokens, kv_cache)
        total = TOTAL_FACTOR * self.max_size
        while len(self._partitions) > 1 and sum(len(c) for c in self._partitions.values()) > total:
            self._partitions.popitem(last=False)


class ModelRunner:
    """One loaded model and the prompt caches of its recent requests."""

    def __init__(
        self,
        model_id: str,
        model_dir: Path,
        prompt_cache_size: int,
        *,
        max_partitions: int = MAX_PARTITIONS,
    ) -> None:
        started = time.perf_counter()
        self.model_id = model_id
        loaded = mlx_load(str(model_dir))
        self.model, self.tokenizer = loaded[0], loaded[1]
        mx.eval(self.model.parameters())
        self.stream = mx.new_stream(mx.default_device())
        self.prompt_cache = PartitionedPromptCache(model_id, prompt_cache_size, max_partitions)
        config = getattr(self.model, "args", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 4096)
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self.tokenizer.vocab))
        self.kv_bytes_per_token = kv_cache_bytes(_config(model_dir), 1)
        self.guide = Guide(self.tokenizer, self.vocab_size)
        self.pace = PrefillPace()
        self.thinking = (
            Thinking(self.tokenizer.think_start, self.tokenizer.think_end)
            if self.tokenizer.has_thinking
            else None
        )
        self.load_seconds = time.perf_counter() - started

    def tokenize(self, request: Generate) -> list[int]:
        """The prompt tokens of ``request``'s messages or prompt (ignoring ``tokens``)."""
        if request.messages is not None:
            try:
                return chat_tokens(self.tokenizer, request.messages, request.output)
            except ToolsNotSupported as exc:
                raise InvalidGeneration(f"{self.model_id} cannot use tools: {exc}") from exc
        assert request.prompt is not None
        return list(self.tokenizer.encode(request.prompt))

    def opens_reasoning(self, prompt: list[int]) -> bool:
        """Whether the prompt ends inside a thinking block the template opened."""
        if self.thinking is None:
            return False
        start = self.tokenizer.rfind_think_start(prompt)
        end = self.tokenizer.rfind_think_end(prompt)
        return start is not None and start >= 0 and (end is None or end < start)

    def splitter(self, request: Generate, prompt: list[int]) -> OutputSplitter:
        output = request.output
        fmt: str | None = None
        if output.constraint is not None and output.constraint.kind == "tool_call":
            fmt = FORCED
        elif output.parse_tools and output.constraint is None:
            fmt = output.tool_format or native_tool_format(self.tokenizer)
        constrained = output.constraint is not None
        return OutputSplitter(
            thinking=None if constrained else self.thinking,
            in_reasoning=not constrained and self.opens_reasoning(prompt),
            tool_format_name=fmt,
            tools=tool_dicts(output.tools),
        )

    def constraint(self, request: Generate) -> Callable[[mx.array, mx.array], mx.array] | None:
        constraint = request.output.constraint
        if constraint is None:
            return None
        try:
            return self.guide.processor(grammar_of(constraint, request.output.tools))
        except (UnsupportedConstraint, GrammarFailed) as exc:
            raise InvalidGeneration(f"the output constraint cannot be enforced: {exc}") from exc

    def prompt_tokens(self, request: Generate) -> list[int]:
        """The prompt: the gateway's ``tokens`` when given (checked, never re-tokenized),
        else the messages or prompt tokenized here."""
        if request.tokens is None:
            return self.tokenize(request)
        outside = next((t for t in request.tokens if not 0 <= t < self.vocab_size), None)
        if outside is not None:
            raise InvalidGeneration(
                f"the prompt holds token {outside}, outside the vocabulary of "
                f"{self.vocab_size} tokens"
            )
        return list(request.tokens)

    def start(self, request: Generate) -> Generation:
        outside = [t for t in request.params.logit_bias if not 0 <= t < self.vocab_size]
        if outside:
            raise InvalidGeneration(
                f"logit_bias names token {outside[0]}, outside the vocabulary of "
                f"{self.vocab_size} tokens"
            )
        prompt = self.prompt_tokens(request)
        if not prompt:
            raise PromptTooLong("the prompt is empty")
        room = self.context_length - len(prompt)
        if room < 1:
            raise PromptTooLong(
                f"the prompt has {len(prompt)} tokens: it leaves no room in the model's "
                f"context of {self.context_length} tokens"
            )
        if request.params.max_tokens > room:  # max_tokens is a ceiling: clamped to the room
            params = msgspec.structs.replace(request.params, max_tokens=room)
            request = msgspec.structs.replace(request, params=params)
        cache, rest = self.prompt_cache.fetch(request.partition, prompt)
        if cache is None:
            cache, rest = make_prompt_cache(self.model), prompt
        elif not rest:
            # An exact hit: the model still needs one token to produce logits.
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return Generation(self, request, prompt, cache, rest)

    def remember(self, partition: str, tokens: list[int], cache: list[Any]) -> None:
        self.prompt_cache.insert(partition, tokens, cache)


class Generation:
    """One request being generated: its prompt prefilled a slice at a time
    (``prefill_slice``), then each token a decoder produced taken in (``accept``).

    The text path is the same whichever decoder runs it: the token goes through
    its own streaming detokenizer, the stop strings, then ``OutputSplitter``; the
    end of the turn and ``max_tokens`` end it as ``stream_generate`` would."""

    def __init__(
        self,
        runner: ModelRunner,
        request: Generate,
        prompt: list[int],
        cache: list[Any],
        rest: list[int],
    ) -> None:
        params = request.params
        self.runner = runner
        self.splitter = runner.splitter(request, prompt)
        self.reasoning_tokens = 0
        self.logprobs = params.logprobs
        self.req_id = request.req_id
        self.caller = request.caller
        self.partition = request.partition
        self.prompt = prompt
        self.cache = cache
        self.tokens = list(prompt)
        self.completion_tokens = 0
        self.max_tokens = params.max_tokens
        self.kv_tokens = len(prompt) + params.max_tokens
        self.stops = StopMatcher(params.stop)
        self.detokenizer = runner.tokenizer.detokenizer
        self.started = Started(request.req_id, len(prompt), len(prompt) - len(rest))
        processors = make_logits_processors(
            logit_bias=dict(params.logit_bias) or None,
            presence_penalty=params.presence_penalty or None,
            frequency_penalty=params.frequency_penalty or None,
            repetition_penalty=repetition_penalty(params),
            repetition_context_size=params.repetition_context_size,
        )
        constraint = runner.constraint(request)
        if constraint is not None:
            processors.append(constraint)
        self.processors = processors
        self.sampler = make_token_sampler(params)
        # All but the last uncached prompt token are prefilled in slices; the last one
        # is the decoder's first input, which gives the first token's logits.
        self.prefill = Prefill(runner.model, cache, rest[:-1], runner.stream)
        self.first = rest[-1:]

    @property
    def prefilled(self) -> bool:
        return self.prefill.done

    def prefill_slice(self, budget: float) -> None:
        self.prefill.step(self.runner.pace, budget)

    def accept(self, token: int, distribution: mx.array) -> Delta | Finished:
        """Take in one generated token (its log-distribution for logprobs) and return
        the output it released, or the end."""
        self.completion_tokens += 1
        self.tokens.append(token)
        logprobs = self._logprob(token, distribution)
        finish: str | None = None
        if token in self.runner.tokenizer.eos_token_ids:
            finish = "stop"  # the end of the turn: not part of the text
        else:
            self.detokenizer.add_token(token)
            if self.completion_tokens >= self.max_tokens:
                finish = "length"
        if finish is not None:
            self.detokenizer.finalize()
        text = self.stops.feed(self.detokenizer.last_segment)
        if self.stops.matched is not None:
            return self.finish("stop", text, stop_sequence=self.stops.matched, logprobs=logprobs)
        if finish is not None:
            return self.finish(finish, text + self.stops.flush(), logprobs=logprobs)
        pieces = self._split(text)
        return Delta(
            self.req_id,
            pieces.text,
            self.completion_tokens,
            pieces.reasoning,
            tuple(pieces.calls),
            logprobs,
        )

    def keep(self, cache: list[Any]) -> None:
        """Keep the KV cache of what it generated for the next prompt that shares it."""
        if self.completion_tokens:
            self.runner.remember(self.partition, self.tokens, cache)

    def _split(self, text: str) -> Pieces:
        """The token's text split; a token that opened, was or closed reasoning counts
        as a reasoning token."""
        before = self.splitter.in_reasoning
        pieces = self.splitter.feed(text)
        if before or self.splitter.in_reasoning or pieces.reasoning:
            self.reasoning_tokens += 1
        return pieces

    def _logprob(self, token: int, distribution: mx.array) -> tuple[TokenLogprob, ...]:
        if self.logprobs is None or token in self.runner.tokenizer.eos_token_ids:
            return ()  # the end of the turn is not part of the answer's tokens
        top: tuple[TopLogprob, ...] = ()
        if self.logprobs > 0:
            k = min(self.logprobs, distribution.size)
            ids = mx.argpartition(-distribution, k - 1)[:k]
            values = distribution[ids]
            order = mx.argsort(-values)
            chosen: list[int] = ids[order].tolist()  # type: ignore[assignment]
            scores: list[float] = values[order].tolist()  # type: ignore[assignment]
            top = tuple(
                TopLogprob(self._piece(i), float(v)) for i, v in zip(chosen, scores, strict=True)
            )
        value = float(distribution[token].item())  # type: ignore[arg-type]
        return (TokenLogprob(token, self._piece(token), value, top),)

    def _piece(self, token: int) -> str:
        return str(self.runner.tokenizer.decode([token]))

    def finish(
        self,
        reason: str,
        text: str = "",
        stop_sequence: str | None = None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> Finished:
        """End the generation (its decoder keeps its KV cache when it leaves)."""
        pieces = Pieces()
        if reason != "cancelled":
            pieces.add(self._split(text))
            pieces.add(self.splitter.close())
        error = self.splitter.error
        if reason == "stop" and self.splitter.calls_made and error is None:
            reason = "tool_calls"
        return Finished(
            self.req_id,
            reason,  # type: ignore[arg-type]
            len(self.prompt),
            self.completion_tokens,
            pieces.text,
            stop_sequence,
            pieces.reasoning,
            tuple(pieces.calls),
            logprobs,
            self.reasoning_tokens,
            error,
        )
