"""How a conversation becomes prompt tokens: the model's chat template, or a plain
fallback.  No MLX here: the worker uses it to generate, and the gateway to count
tokens (Anthropic's count_tokens) with the tokenizer alone."""

from __future__ import annotations

from typing import Any

from engine.protocol import ChatMessage


def chat_tokens(tokenizer: Any, messages: tuple[ChatMessage, ...]) -> list[int]:
    """The prompt tokens of ``messages`` for ``tokenizer`` (a Hugging Face tokenizer
    or mlx-lm's wrapper of one), ready for the assistant's turn."""
    plain = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(text, add_special_tokens=False))
    joined = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + "assistant: "
    return list(tokenizer.encode(joined))
