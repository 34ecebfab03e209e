"""Counting prompt tokens in the gateway process, with a model's tokenizer alone.

Anthropic's ``count_tokens`` must not load a model's weights.  The tokenizer
(``tokenizer.json`` and its config) is loaded once per model directory with
``transformers`` (never MLX) and the prompt is built exactly as the worker
builds it (``engine.chat``), so the count equals the ``input_tokens`` the
same request reports.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

from engine.chat import chat_tokens
from engine.protocol import ChatMessage


@functools.lru_cache(maxsize=8)
def tokenizer_for(model_dir: Path) -> Any:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


async def count_chat_tokens(model_dir: Path, messages: tuple[ChatMessage, ...]) -> int:
    def count() -> int:
        return len(chat_tokens(tokenizer_for(model_dir), messages))

    return await asyncio.to_thread(count)
