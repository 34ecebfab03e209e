"""Build tiny llama models whose generation follows a script (seconds, no network).

Random weights never write tool-call markup, so end-to-end tests of tool-call
parsing and reasoning separation use a model that, given a chat prompt, writes
a fixed list of text pieces and then ``<|im_end|>``, greedily or sampled.

The trick is a Markov chain on the last token.  Every ``o_proj`` and
``down_proj`` is zero, so the residual stream at the last position is that
token's embedding, and after the final RMSNorm it is proportional to it.  Each
token with a successor gets its own one-hot embedding dimension ("slot"); every
other token shares slot 0, whose successor is the EOS token.  The untied
``lm_head`` row of token ``u`` weighs the slot of each token followed by ``u``,
giving ``u`` a logit of ``LOGIT`` (about 50) and every other token 0.

Each piece is one vocabulary entry, written in byte-level form ("Ġ" for space,
"Ċ" for newline) with no merge, so user text never encodes to it, yet Hugging
Face ``decode`` and mlx-lm's ``BPEStreamingDetokenizer`` give the piece's text;
``<think>``/``</think>`` are added tokens (as in Qwen3), so mlx-lm sees a
thinking model.  One merge, "Ċ Ċ", makes "\\n\\n" a token of its own: the
generation prompt ends in "Ċ" ("<|im_start|>assistant\\n"), or in "ĊĊ" when
Qwen3's template switches thinking off ("...</think>\\n\\n"), so a second script
can start there.  A piece may recur only where it is followed by the same piece
each time (each token has one successor); a first piece starting with a space
loses it (mlx-lm trims a leading space).  Run in a subprocess by the fixtures
(``python -m tests.support.scripted_model DIR SCRIPT_JSON [TEMPLATE_NAME]``) so
the test process itself never imports MLX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.tiny_model import CHAT_TEMPLATE, SPECIALS

_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name ' }}
    {{- 'and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}{{- tool_call.arguments }}
            {%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}@THINK_OFF@
{%- endif %}"""
_THINK_OFF = r"""
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}"""
QWEN_TOOLS_TEMPLATE = _TEMPLATE.replace("@THINK_OFF@", "")
QWEN3_THINKING_TEMPLATE = _TEMPLATE.replace("@THINK_OFF@", _THINK_OFF)
TEMPLATES = {
    "qwen_tools": QWEN_TOOLS_TEMPLATE,
    "qwen3_thinking": QWEN3_THINKING_TEMPLATE,
    "chatml": CHAT_TEMPLATE,
}
THINK = ("<think>", "</think>")
LOGIT = 50.0
EOS = "<|im_end|>"


_KEEP, _EXTRA = {*range(33, 127), *range(161, 173), *range(174, 256)}, iter(range(256, 512))
BYTE_SYMBOLS = [chr(b) if b in _KEEP else chr(next(_EXTRA)) for b in range(256)]  # GPT-2's


def byte_level(text: str) -> str:
    """``text`` in the byte-level alphabet ("Ġ" for space, "Ċ" for newline)."""
    return "".join(BYTE_SYMBOLS[b] for b in text.encode("utf-8"))


def _vocab_and_chain(
    scripts: list[tuple[str, list[str]]], added: list[str]
) -> tuple[dict[str, int], dict[int, int]]:
    """The vocabulary, and each token's successor, for scripts started after given tokens."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *sorted(BYTE_SYMBOLS), "ĊĊ", *added])}
    successor: dict[int, int] = {}
    for start, pieces in scripts:
        if "" in pieces:
            raise ValueError("a script piece must not be empty")
        chain = [start, *(p if p in added else byte_level(p) for p in pieces), EOS]
        for token in chain:
            vocab.setdefault(token, len(vocab))
        for before, after in zip(chain, chain[1:], strict=False):
            if successor.setdefault(vocab[before], vocab[after]) != vocab[after]:
                raise ValueError(f"token {before!r} would need two successors")
    return vocab, successor


def write_tokenizer(
    out: Path, vocab: dict[str, int], added: list[str], template: str, max_len: int
) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "Ċ")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": EOS,
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": template,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def build_scripted_model(
    out: Path,
    script: list[str],
    *,
    template: str = QWEN_TOOLS_TEMPLATE,
    script_after_think_off: list[str] | None = None,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a llama model that answers any chat prompt with ``script``; returns ``out``.

    ``template`` is a chat template or a name in ``TEMPLATES``.  A generation
    prompt ending in "\\n\\n" (Qwen3's with ``enable_thinking=False``) gets
    ``script_after_think_off`` instead when given (else ``script`` too).
    """
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    template = TEMPLATES.get(template, template)
    pieces = {*script, *(script_after_think_off or [])}
    added = list(THINK) if THINK[1] in template or pieces & set(THINK) else []
    second = script if script_after_think_off is None else script_after_think_off
    vocab, successor = _vocab_and_chain([("Ċ", list(script)), ("ĊĊ", list(second))], added)
    eos = vocab[EOS]
    slots = {t: s for s, t in enumerate((t for t, u in successor.items() if u != eos), 1)}
    hidden = max(128, -(-(len(slots) + 1) // 64) * 64)
    embed = np.zeros((len(vocab), hidden), np.float32)
    embed[np.arange(len(vocab)), [slots.get(t, 0) for t in range(len(vocab))]] = 1.0
    head = np.zeros((len(vocab), hidden), np.float32)
    head[eos, 0] = LOGIT / hidden**0.5  # the normed one-hot is sqrt(hidden) at its slot
    for token, slot in slots.items():
        head[successor[token], slot] = LOGIT / hidden**0.5

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, vocab, added, template, max_position_embeddings)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": len(vocab),
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": False,
        "eos_token_id": eos,
        "bos_token_id": vocab["<|im_start|>"],
    }
    model = Model(ModelArgs.from_dict(config))
    weights = {k: mx.zeros_like(v) for k, v in tree_flatten(model.parameters())}
    weights.update({k: mx.ones_like(v) for k, v in weights.items() if k.endswith("norm.weight")})
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


if __name__ == "__main__":
    # SCRIPT_JSON: the pieces, or an object of build_scripted_model's arguments.
    spec = json.loads(sys.argv[2])
    kwargs = spec if isinstance(spec, dict) else {"script": spec}
    if len(sys.argv) > 3:
        kwargs["template"] = sys.argv[3]
    build_scripted_model(Path(sys.argv[1]), **kwargs)
