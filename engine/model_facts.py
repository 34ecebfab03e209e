"""What an MLX model directory says about itself, read from its files alone.

Ollama's API describes every model: ``/api/tags`` and ``/api/ps`` give its
``details`` (family, parameter size, quantization level, format) with a size, a
digest and a modification time; ``/api/show`` adds ``model_info`` (context and
embedding length, layers, heads, vocabulary), the chat template and the
capabilities. All of it comes from ``config.json``, the tokenizer files and the
safetensors headers: never a weight byte, never MLX, since this runs in the
gateway process on every ``/api/tags``. Answers are memoized by the directory's
file listing (names, sizes, mtimes), so a changed file gives fresh facts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.memory import MemoryEstimateError, safetensors_header

_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template")
_TOKENIZER_FILES = ("vocab.json", "merges.txt")
_CONFIG_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}

# (relative path, size, mtime_ns) of every file under the model directory.
Listing = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ModelFacts:
    family: str  # config.json "model_type"; "unknown" if absent
    families: tuple[str, ...]
    parameter_count: int  # 0 when the safetensors headers cannot be read
    parameter_size: str  # Ollama's rounding: "135M", "134.52M", "7.6B"; "unknown" for 0
    quantization_level: str  # "Q4", "Q8"... or the weights' dtype: "BF16", "F16", "F32"
    format: str
    digest: str  # sha256 of config.json, file names and sizes, samples of the weights
    modified_at: float  # newest mtime (epoch seconds) of config.json and the weight files
    size_bytes: int  # all the directory's files
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    vocab_size: int | None
    chat_template: str | None
    capabilities: tuple[str, ...]  # "completion", then "tools" and "thinking" if the template says


def facts_of(model_dir: Path) -> ModelFacts:
    """The facts of ``model_dir``; ``ValueError`` when it has no readable config.json."""
    root = model_dir.resolve()
    return _cached_facts(root, _listing(root))


def parameter_size(count: int) -> str:
    """Ollama's ``HumanNumber``: B with one decimal, M with two, K with none; a whole
    number drops its decimals."""
    if count <= 0:
        return "unknown"
    for scale, unit, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.{decimals}f}{unit}"
    return f"{count / 1000:.0f}K" if count >= 1000 else str(count)


def parameter_count(files: list[Path], quantization: dict | None) -> tuple[int, str | None]:
    """Real parameters in the safetensors ``files`` and the dtype holding most of them;
    ``(0, None)`` when a header is unreadable. Under an MLX ``quantization`` config,
    scales and biases are not parameters and a packed U32 row of k holds k*32/bits."""
    by_dtype: Counter[str] = Counter()
    try:
        for path in files:
            for name, entry in safetensors_header(path).items():
                if name != "__metadata__":
                    by_dtype[str(entry["dtype"])] += _tensor_parameters(name, entry, quantization)
    except (MemoryEstimateError, AttributeError, KeyError, TypeError, ValueError):
        return 0, None
    dtype = max(by_dtype, key=by_dtype.__getitem__, default=None)
    return sum(by_dtype.values()), dtype


def _tensor_parameters(name: str, entry: dict, quantization: dict | None) -> int:
    shape = [int(d) for d in entry["shape"]]
    count = math.prod(shape)
    if quantization is None:
        return count
    if name.endswith((".scales", ".biases")):
        return 0
    if entry["dtype"] == "U32" and shape:
        layer = quantization.get(name.rsplit(".", 1)[0])  # mixed precision: per-layer bits
        bits = layer["bits"] if isinstance(layer, dict) else quantization["bits"]
        return count * 32 // int(bits)
    return count


@functools.lru_cache(maxsize=256)
def _cached_facts(root: Path, listing: Listing) -> ModelFacts:
    try:
        config_bytes = (root / "config.json").read_bytes()
        config = json.loads(config_bytes)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root.name}: no readable config.json ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{root.name}: config.json is not a JSON object")
    text: dict = config.get("text_config") or config  # multimodal configs nest the text model
    if not isinstance(text, dict):
        text = config

    def number(key: str) -> int | None:
        value = text.get(key, config.get(key))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    quantization = _quantization(config)
    weights = sorted(root.glob("*.safetensors"))
    count, dtype = parameter_count(weights, quantization)
    if quantization is not None:
        level = f"Q{quantization['bits']}"
    else:
        level = dtype or _CONFIG_DTYPES.get(str(text.get("torch_dtype")), "unknown")
    template, templates = _chat_templates(root)
    family = str(config.get("model_type") or "unknown")
    return ModelFacts(
        family=family,
        families=(family,),
        parameter_count=count,
        parameter_size=parameter_size(count),
        quantization_level=level,
        format="safetensors",
        digest=_digest(root, config_bytes, listing),
        modified_at=max((m for n, _, m in listing if _is_own(n)), default=0) / 1e9,
        size_bytes=sum(size for _, size, _ in listing),
        context_length=number("max_position_embeddings"),
        embedding_length=number("hidden_size"),
        block_count=number("num_hidden_layers"),
        head_count=number("num_attention_heads"),
        head_count_kv=number("num_key_value_heads"),
        vocab_size=number("vocab_size"),
        chat_template=template,
        capabilities=_capabilities("\n".join(templates)),
    )


def _listing(root: Path) -> Listing:
    entries = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _is_weight(name: str) -> bool:
    return name.endswith(".safetensors") and "/" not in name


def _is_tokenizer(name: str) -> bool:
    return name.startswith(_TOKENIZER_PREFIXES) or name in _TOKENIZER_FILES


def _is_own(name: str) -> bool:
    """config.json or a weight file: what dates a model."""
    return name == "config.json" or _is_weight(name)


def _quantization(config: dict) -> dict | None:
    for key in ("quantization", "quantization_config"):
        value = config.get(key)
        if isinstance(value, dict) and isinstance(value.get("bits"), int) and value["bits"] > 0:
            return value
    return None


SAMPLE_BYTES = 64 * 1024


def _digest(root: Path, config_bytes: bytes, listing: Listing) -> str:
    """Cheap but content-bound: the config, each file's name and size, and three 64 KiB
    samples (start, middle, end) of every weight file, so two models of one shape with
    different weights differ; a weight file is never read whole."""
    digest = hashlib.sha256(config_bytes)
    for name, size, _ in listing:
        if _is_weight(name) or _is_tokenizer(name):
            digest.update(f"\0{name}\0{size}".encode())
        if _is_weight(name):
            digest.update(_samples(root / name, size))
    return digest.hexdigest()


def _samples(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as f:
            out = b""
            for offset in sorted(
                {0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}
            ):
                f.seek(offset)
                out += f.read(SAMPLE_BYTES)
            return out
    except OSError:
        return b""


def _chat_templates(root: Path) -> tuple[str | None, list[str]]:
    """The default chat template and every template, read as transformers does: a
    ``chat_template.jinja`` file wins over tokenizer_config.json's ``chat_template``,
    then the older ``chat_template.json``; a list of named templates gives its "default"
    (else its first)."""
    templates: list[str] = []
    default = _read_text(root / "chat_template.jinja")
    for path in (root / "tokenizer_config.json", root / "chat_template.json"):
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        named = value if isinstance(value, list) else [{"name": "default", "template": value}]
        found = [t for t in named if isinstance(t, dict) and isinstance(t.get("template"), str)]
        templates += [t["template"] for t in found]
        if found and default is None:
            default = next((t for t in found if t.get("name") == "default"), found[0])["template"]
    extra = sorted((root / "additional_chat_templates").glob("*.jinja"))
    templates += [t for t in (_read_text(p) for p in extra) if t is not None]
    return default, ([default] if default is not None else []) + templates


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _capabilities(templates: str) -> tuple[str, ...]:
    found = ["completion"]
    if "tools" in templates:
        found.append("tools")
    if "enable_thinking" in templates or "<think>" in templates:
        found.append("thinking")
    return tuple(found)
