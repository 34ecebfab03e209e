"""Model facts: what a model directory says about itself, for Ollama's API."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest

from engine.model_facts import facts_of, parameter_size

_ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "U8": 1}
LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 100,
}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file: its JSON header, then zero bytes for every tensor."""
    header: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * _ELEMENT_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def make_model(
    path: Path,
    tensors: dict[str, tuple[str, list[int]]] | None = None,
    *,
    template: object = "{{ messages }}",
    **config: object,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**LLAMA, **config}))
    if template is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    write_safetensors(
        path / "model.safetensors",
        tensors or {"embed.weight": ("F16", [100, 8]), "layer.weight": ("F16", [8, 8])},
    )
    return path


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_plain_model_counts_every_element_and_names_its_dtype(tmp_path, dtype):
    model = make_model(
        tmp_path / "m", {"embed.weight": (dtype, [100, 8]), "layer.weight": (dtype, [8, 8])}
    )
    facts = facts_of(model)
    assert facts.parameter_count == 100 * 8 + 8 * 8
    assert facts.quantization_level == dtype
    assert facts.format == "safetensors"


def test_level_is_the_dtype_holding_most_parameters(tmp_path):
    model = make_model(
        tmp_path / "m", {"norm.weight": ("F32", [8]), "layer.weight": ("BF16", [8, 8])}
    )
    assert facts_of(model).quantization_level == "BF16"


def test_parameters_are_summed_over_every_shard(tmp_path):
    model = make_model(tmp_path / "m", {"a.weight": ("F16", [10, 10])})
    write_safetensors(model / "model-00002-of-00002.safetensors", {"b.weight": ("F16", [5])})
    assert facts_of(model).parameter_count == 105


@pytest.mark.parametrize(("bits", "packed_columns"), [(4, 8), (8, 16), (2, 4)])
def test_mlx_quantized_weights_count_unpacked_parameters(tmp_path, bits, packed_columns):
    # 16 rows of 64 real parameters, packed into U32 words; scales and biases are not parameters.
    tensors = {
        "layers.0.proj.weight": ("U32", [16, packed_columns]),
        "layers.0.proj.scales": ("F16", [16, 1]),
        "layers.0.proj.biases": ("F16", [16, 1]),
        "norm.weight": ("F16", [64]),
    }
    model = make_model(tmp_path / "m", tensors, quantization={"group_size": 64, "bits": bits})
    facts = facts_of(model)
    assert facts.parameter_count == 16 * 64 + 64
    assert facts.quantization_level == f"Q{bits}"


def test_mixed_precision_layers_unpack_with_their_own_bits(tmp_path):
    tensors = {"a.weight": ("U32", [16, 8]), "b.weight": ("U32", [16, 16])}
    quantization = {"group_size": 64, "bits": 4, "b": {"group_size": 64, "bits": 8}}
    model = make_model(tmp_path / "m", tensors, quantization=quantization)
    assert facts_of(model).parameter_count == 2 * 16 * 64


def test_quantization_config_key_names_the_level_too(tmp_path):
    model = make_model(tmp_path / "m", quantization_config={"bits": 8, "group_size": 64})
    assert facts_of(model).quantization_level == "Q8"


@pytest.mark.parametrize(
    ("count", "size"),
    [
        (0, "unknown"),
        (999, "999"),
        (135_400, "135K"),
        (135_000_000, "135M"),
        (134_515_008, "134.52M"),
        (494_032_768, "494.03M"),
        (1_000_000_000, "1B"),
        (1_543_714_304, "1.5B"),
        (7_615_616_512, "7.6B"),
        (70_553_706_496, "70.6B"),
    ],
)
def test_parameter_size_follows_ollamas_rounding(count, size):
    assert parameter_size(count) == size


def test_model_info_comes_from_config(tmp_path):
    facts = facts_of(make_model(tmp_path / "m"))
    assert facts.family == "llama"
    assert facts.families == ("llama",)
    assert (facts.context_length, facts.embedding_length, facts.block_count) == (2048, 64, 2)
    assert (facts.head_count, facts.head_count_kv, facts.vocab_size) == (4, 2, 100)


def test_nested_text_config_and_missing_fields(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 32}}))
    facts = facts_of(model)
    assert facts.family == "unknown"
    assert facts.embedding_length == 32
    assert facts.context_length is None
    assert facts.head_count_kv is None


def test_size_and_modified_time_come_from_the_files(tmp_path):
    model = make_model(tmp_path / "m")
    os.utime(model / "model.safetensors", (1_700_000_000, 1_700_000_000))
    os.utime(model / "config.json", (1_600_000_000, 1_600_000_000))
    os.utime(model / "tokenizer_config.json", (1_800_000_000, 1_800_000_000))
    facts = facts_of(model)
    assert facts.modified_at == 1_700_000_000
    assert facts.size_bytes == sum(f.stat().st_size for f in model.iterdir())


def test_digest_depends_on_the_files_not_the_path(tmp_path):
    model = make_model(tmp_path / "m")
    copy = shutil.copytree(model, tmp_path / "copy")
    digest = facts_of(model).digest
    assert len(digest) == 64
    int(digest, 16)
    assert facts_of(model).digest == digest
    assert facts_of(copy).digest == digest


def test_digest_changes_when_a_weight_file_size_changes(tmp_path):
    model = make_model(tmp_path / "m")
    before = facts_of(model).digest
    write_safetensors(model / "model.safetensors", {"embed.weight": ("F16", [100, 9])})
    assert facts_of(model).digest != before


def test_digest_changes_when_config_changes(tmp_path):
    model = make_model(tmp_path / "m")
    before = facts_of(model).digest
    make_model(model, rope_theta=10000.0)
    assert facts_of(model).digest != before


def test_digest_tells_apart_weights_of_the_same_shape(tmp_path):
    model = make_model(tmp_path / "m")
    before = facts_of(model).digest
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + b"\x01")  # same size, different tensor data
    assert facts_of(model).digest != before


def test_digest_reads_only_samples_of_a_large_weight_file(tmp_path, monkeypatch):
    from engine import model_facts

    model = make_model(tmp_path / "m")
    weights = model / "model.safetensors"
    with weights.open("ab") as f:
        f.truncate(weights.stat().st_size + 8 * 1024 * 1024)  # 8 MiB more, sparse
    read: list[int] = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        if self.name == "model.safetensors":
            real_read = handle.read
            handle.read = lambda n=-1: read.append(n) or real_read(n)
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    model_facts.facts_of(model)
    assert read and all(0 < n <= model_facts.SAMPLE_BYTES for n in read)


@pytest.mark.parametrize(
    ("template", "capabilities"),
    [
        ("{% for m in messages %}{{ m.content }}{% endfor %}", ("completion",)),
        ("{% if tools %}{{ tools | tojson }}{% endif %}", ("completion", "tools")),
        ("{{ '<think>' }}{{ messages }}", ("completion", "thinking")),
        ("{% if enable_thinking %}x{% endif %}", ("completion", "thinking")),
        ("{{ tools }}{{ enable_thinking }}", ("completion", "tools", "thinking")),
    ],
)
def test_capabilities_follow_the_chat_template(tmp_path, template, capabilities):
    facts = facts_of(make_model(tmp_path / "m", template=template))
    assert facts.chat_template == template
    assert facts.capabilities == capabilities


def test_a_model_without_template_only_completes(tmp_path):
    facts = facts_of(make_model(tmp_path / "m", template=None))
    assert facts.chat_template is None
    assert facts.capabilities == ("completion",)


def test_template_list_gives_its_default_and_its_tool_template_counts(tmp_path):
    templates = [
        {"name": "tool_use", "template": "{{ tools }}"},
        {"name": "default", "template": "plain"},
    ]
    facts = facts_of(make_model(tmp_path / "m", template=templates))
    assert facts.chat_template == "plain"
    assert facts.capabilities == ("completion", "tools")


def test_template_list_without_default_gives_its_first(tmp_path):
    templates = [{"name": "rag", "template": "first"}, {"name": "other", "template": "second"}]
    assert facts_of(make_model(tmp_path / "m", template=templates)).chat_template == "first"


def test_chat_template_jinja_file_wins_over_tokenizer_config(tmp_path):
    model = make_model(tmp_path / "m", template="from tokenizer_config")
    (model / "chat_template.jinja").write_text("from the jinja file")
    assert facts_of(model).chat_template == "from the jinja file"


def test_chat_template_json_is_read_when_nothing_else_has_one(tmp_path):
    model = make_model(tmp_path / "m", template=None)
    (model / "chat_template.json").write_text(json.dumps({"chat_template": "legacy"}))
    assert facts_of(model).chat_template == "legacy"


def test_missing_config_raises_value_error(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        facts_of(model)
    with pytest.raises(ValueError, match="config.json"):
        facts_of(tmp_path / "absent")


def test_unparseable_config_raises_value_error(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        facts_of(model)


@pytest.mark.parametrize(
    "contents",
    [
        b"\x01\x02",  # shorter than the length prefix
        struct.pack("<Q", 1 << 40) + b"{}",  # implausible header length
        struct.pack("<Q", 50) + b'{"a": ',  # truncated header
        struct.pack("<Q", 2) + b"[]",  # not a mapping
        struct.pack("<Q", 19) + b'{"a": {"dtype": 1}}',  # no shape
    ],
)
def test_corrupt_header_gives_zero_parameters_not_an_error(tmp_path, contents):
    model = make_model(tmp_path / "m")
    (model / "model.safetensors").write_bytes(contents)
    facts = facts_of(model)
    assert facts.parameter_count == 0
    assert facts.parameter_size == "unknown"


def test_memo_returns_fresh_facts_after_the_config_changes(tmp_path):
    model = make_model(tmp_path / "m")
    first = facts_of(model)
    assert facts_of(model) is first
    make_model(model, model_type="qwen2")
    assert facts_of(model).family == "qwen2"


def test_tiny_mlx_model_is_described(tiny_models_dir):
    model = tiny_models_dir / "tiny-a"
    config = json.loads((model / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config["intermediate_size"]
    facts = facts_of(model)
    assert facts.family == "llama"
    assert facts.parameter_count == (
        layers * (per_layer + 2 * hidden) + config["vocab_size"] * hidden + hidden
    )
    assert facts.quantization_level == "F32"
    assert facts.chat_template is not None
    assert "<|im_start|>" in facts.chat_template
