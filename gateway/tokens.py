"""Tokenizing prompts in the gateway process, with a model's tokenizer alone.

The admission pipeline tokenizes a prompt before any worker sees it (to reserve
token limits and refuse what cannot fit the context) and sends the tokens with
the request, so they must be exactly the worker's.  The worker's tokenizer is
mlx-lm's ``TokenizerWrapper`` around the Hugging Face tokenizer (it passes the
chat template ``enable_thinking`` and may bring its own template), so this module
builds the same wrapper as ``mlx_lm.load`` does, and renders chats with
``engine.chat`` as the worker does.  mlx-lm's ``tokenizer_utils`` is run from its
file alone: it needs only ``transformers``, while importing the ``mlx_lm``
package would import MLX, which the gateway process never does.

Tokenizing a large body takes CPU seconds, so it runs on the threads of
``Tokenizers`` (named ``tokenize_N``), never on the event loop's default executor
that authentication uses; at most ``queue`` calls wait or run at once, and one
more raises ``TokenizerBusy`` at once (503 server_busy).  ``transformers`` is
imported once under a global lock (its lazy first import is not thread-safe);
each model directory's tokenizer is loaded once, under that directory's lock,
and the ``loaded`` most recently used are kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine import mlx_lm_files
from engine.chat import chat_tokens, resolve_tool_format
from engine.constraints import problem as constraint_problem
from engine.protocol import PLAIN_OUTPUT, ChatMessage, Constraint, OutputSpec, ToolSpec

T = TypeVar("T")


class TokenizerBusy(Exception):
    """As many tokenizing calls as the queue holds already wait or run (503 server_busy)."""


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model's tokenizer as the worker sees it, and how much text one token covers."""

    tokenizer: Any  # mlx-lm's TokenizerWrapper
    bytes_per_token: int | None  # most UTF-8 bytes one token stands for; None: no bound


def load_tokenizer(model_dir: Path) -> LoadedTokenizer:
    """The tokenizer ``mlx_lm.load(model_dir)`` gives the worker, without MLX."""
    utils = mlx_lm_files.module("tokenizer_utils")
    hf = utils.AutoTokenizer.from_pretrained(model_dir)
    chat_template = None
    kind = hf.init_kwargs.get("chat_template_type")
    if kind:  # as mlx_lm's tokenizer_utils.load: mlx-lm's own template for this model
        if not str(kind).isidentifier():
            raise ValueError(f"{model_dir}: bad chat_template_type {kind!r}")
        chat_template = mlx_lm_files.module(f"chat_templates.{kind}").apply_chat_template
    wrapper = utils.TokenizerWrapper(hf, chat_template=chat_template)
    return LoadedTokenizer(wrapper, bytes_per_token(hf))


# How much a normalizer may shorten text (NFC composes Hangul jamo 3:1; lowercasing
# maps the 3-byte Kelvin sign to "k"); one not named here may drop characters.
_NORMALIZER_FACTOR = {"Prepend": 1, "NFC": 3, "NFKC": 3, "Lowercase": 3}
# Pre-tokenizers that split text without dropping any of it (unless told to remove).
_KEEPS_TEXT = {"ByteLevel", "Metaspace", "Digits", "Split", "Punctuation", "UnicodeScripts"}


def _steps(spec: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A normalizer's or pre-tokenizer's steps, ``Sequence``s flattened."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [step for part in spec.get(key, []) for step in _steps(part, key)]
    return [spec]


def _shrink_factor(step: dict[str, Any]) -> int | None:
    if step.get("type") == "Replace":  # SentencePiece's " " -> "▁" lengthens; others may not
        spaces = step.get("pattern") == {"String": " "} and step.get("content") == "▁"
        return 1 if spaces else None
    return _NORMALIZER_FACTOR.get(str(step.get("type")))


def bytes_per_token(hf: Any) -> int | None:
    """The most UTF-8 bytes of text that one token can stand for, so that a text of N
    bytes has at least ``ceil(N / bytes_per_token)`` tokens; ``None`` when this
    tokenizer may drop or swallow text (a normalizer or pre-tokenizer that removes
    characters, added tokens that strip spaces, fused unknown characters), so that
    no such bound holds."""
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    factor = 1
    for step in _steps(spec.get("normalizer"), "normalizers"):
        shrink = _shrink_factor(step)
        if shrink is None:
            return None
        factor *= shrink
    splits = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    if any(s.get("type") not in _KEEPS_TEXT or s.get("behavior") == "Removed" for s in splits):
        return None
    added = spec.get("added_tokens", [])
    if any(token.get("lstrip") or token.get("rstrip") for token in added):
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None
    byte_level = any(s.get("type") == "ByteLevel" for s in splits)
    added_text = {token["content"] for token in added}

    def covers(token: str) -> int:
        # Byte-level symbols are one text byte each; added tokens match raw text.
        return len(token) if byte_level and token not in added_text else len(token.encode())

    longest = max((covers(token) for token in hf.get_vocab()), default=1)
    if not (model.get("byte_fallback") or byte_level):
        if model.get("unk_token") is None or model.get("fuse_unk"):
            return None  # unknown characters are dropped, or fused into one token
        longest = max(longest, 4)  # one unknown character, up to 4 bytes, per token
    return longest * factor


class Tokenizers:
    """The gateway's tokenizing pool: its own threads, a bounded queue, tokenizers loaded
    once per model directory (the ``loaded`` most recently used are kept)."""

    def __init__(self, threads: int = 2, queue: int = 64, *, loaded: int = 8) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="tokenize")
        self._queue = queue
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._loaded_max = loaded
        self._loaded: OrderedDict[Path, LoadedTokenizer] = OrderedDict()
        self._dir_locks: dict[Path, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _loaded and _dir_locks
        self.loads = 0  # tokenizers loaded so far (a reload after eviction counts again)

    async def chat(
        self,
        model_dir: Path,
        messages: tuple[ChatMessage, ...],
        output: OutputSpec = PLAIN_OUTPUT,
    ) -> list[int]:
        """The prompt tokens the worker would compute for this conversation."""
        return await self._run(
            lambda: chat_tokens(self._get(model_dir).tokenizer, messages, output)
        )

    async def tool_format(self, model_dir: Path, fallback: str | None) -> str:
        """The tool-call format of this model (``ToolsNotSupported`` if it has none)."""
        return await self._run(
            lambda: resolve_tool_format(self._get(model_dir).tokenizer, fallback)[0]
        )

    async def check_constraint(
        self, constraint: Constraint, tools: tuple[ToolSpec, ...]
    ) -> str | None:
        """Why the engine cannot enforce ``constraint``, or ``None`` (compiles it)."""
        return await self._run(lambda: constraint_problem(constraint, tools))

    async def text(self, model_dir: Path, prompt: str) -> list[int]:
        """The prompt tokens the worker would compute for a text completion."""
        return await self._run(lambda: list(self._get(model_dir).tokenizer.encode(prompt)))

    async def fits(self, model_dir: Path, text_bytes: int, room_tokens: int) -> bool:
        """False when a text of ``text_bytes`` UTF-8 bytes must have more than
        ``room_tokens`` tokens, whatever it says; nothing is tokenized."""
        with self._lock:
            loaded = self._loaded.get(model_dir)
        if loaded is None:
            loaded = await self._run(lambda: self._get(model_dir))
        per_token = loaded.bytes_per_token
        return per_token is None or math.ceil(text_bytes / per_token) <= room_tokens

    def close(self) -> None:
        """Stop the threads; calls still queued are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[[], T]) -> T:
        with self._pending_lock:
            if self._pending >= self._queue:
                raise TokenizerBusy(
                    "too many prompts are waiting to be tokenized; retry in a moment"
                )
            self._pending += 1
        try:
            future = self._pool.submit(work)
        except BaseException:
            self._release()
            raise
        # Released when the work ends (or is cancelled before it starts), not when the
        # caller stops waiting: a disconnected client's work still occupies a thread.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object = None) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _get(self, model_dir: Path) -> LoadedTokenizer:
        """The tokenizer of ``model_dir``, loaded by the first caller only (a pool thread)."""
        with self._lock:
            loaded = self._loaded.get(model_dir)
            if loaded is not None:
                self._loaded.move_to_end(model_dir)
                return loaded
            dir_lock = self._dir_locks.setdefault(model_dir, threading.Lock())
        with dir_lock:
            with self._lock:
                loaded = self._loaded.get(model_dir)
            if loaded is None:
                loaded = load_tokenizer(model_dir)
                with self._lock:
                    self.loads += 1
                    self._loaded[model_dir] = loaded
                    while len(self._loaded) > self._loaded_max:
                        self._loaded.popitem(last=False)
            return loaded
