"""GGUF -> MLX conversion: weights, config, tokenizer, errors and atomic output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, cast

import gguf
import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest

from engine import gguf_import
from engine.bundled import fetch_gguf
from engine.gguf_import import GGUFImportError, import_gguf, main
from engine.gguf_tokenizer import build_tokenizer
from tests.support.tiny_gguf import (
    MERGES,
    QTYPES,
    llama3_rope_factors,
    reference_logits,
    vocabulary,
    write_tiny_gguf,
)

TEXT = "Hello  the 2024 <|im_start|>user\nhello, the <think>world<|im_end|>"
EXPECTED_BITS = {"F32": None, "F16": None, "Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "mixed": 4}


def convert(
    tmp_path: Path, qtype: str = "Q4_1", *, tied: bool = True, rope_freqs: bool = False, **options
) -> tuple[Path, Path]:
    """A tiny GGUF written and converted under ``tmp_path``: (gguf file, model dir)."""
    source = write_tiny_gguf(tmp_path / "tiny.gguf", qtype, tied=tied, rope_freqs=rope_freqs)
    return source, import_gguf(source, tmp_path / "model", **options)


def load(model_dir: Path) -> tuple[Any, Any]:
    """``mlx_lm.load``: (model, tokenizer wrapper)."""
    model, tokenizer, *_ = mlx_lm.load(str(model_dir))  # typed as 3-tuple, returns 2
    return model, tokenizer


def tensors(path: Path) -> dict[str, mx.array]:
    """``mx.load`` of a weights file, typed."""
    return cast(dict[str, mx.array], mx.load(str(path)))


def config_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def assert_logits_match(model_dir: Path, source: Path) -> None:
    model, tokenizer = load(model_dir)
    ids = tokenizer.encode(TEXT)
    got = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    want = reference_logits(source, ids)
    # Same quantized values either way, so only the float dtype's rounding differs.
    rtol = 1e-4 if model.model.norm.weight.dtype == mx.float32 else 2e-2
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


@pytest.mark.parametrize("qtype", QTYPES)
def test_converted_model_reproduces_the_gguf_logits(tmp_path, qtype):
    source, model_dir = convert(tmp_path, qtype)
    assert_logits_match(model_dir, source)


@pytest.mark.parametrize("qtype", ["F16", "mixed"])
def test_output_tensor_becomes_an_untied_lm_head(tmp_path, qtype):
    source, model_dir = convert(tmp_path, qtype, tied=False)
    assert config_of(model_dir)["tie_word_embeddings"] is False
    assert_logits_match(model_dir, source)


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_without_output_tensor_ties_word_embeddings(tmp_path, qtype):
    _, model_dir = convert(tmp_path, qtype)
    assert config_of(model_dir)["tie_word_embeddings"] is True
    model, _ = load(model_dir)
    assert "lm_head" not in model


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantized_weights_keep_their_gguf_bits(tmp_path, qtype):
    _, model_dir = convert(tmp_path, qtype)
    config, bits = config_of(model_dir), EXPECTED_BITS[qtype]
    model, _ = load(model_dir)
    q_proj = model.model.layers[0].self_attn.q_proj
    if bits is None:
        assert "quantization" not in config and type(q_proj) is nn.Linear
        return
    assert (config["quantization"]["group_size"], config["quantization"]["bits"]) == (32, bits)
    assert config["quantization_config"] == config["quantization"]
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (bits, 32)


def test_q4_1_weights_stay_4bit_quantized_bit_for_bit(tmp_path):
    source, model_dir = convert(tmp_path, "Q4_1")
    original = tensors(source)
    model, _ = load(model_dir)
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, nn.QuantizedLinear) and down.bits == 4
    assert mx.array_equal(down.weight, original["blk.1.ffn_down.weight"]).item()
    embed = model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and embed.bits == 4


def test_mixed_bits_are_recorded_per_module(tmp_path):
    _, model_dir = convert(tmp_path, "mixed")
    eight = {"group_size": 32, "bits": 8}
    assert config_of(model_dir)["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": eight,
        "model.layers.0.mlp.down_proj": eight,
        "model.layers.1.mlp.down_proj": eight,
    }
    model, _ = load(model_dir)
    layer = model.model.layers[0]
    assert (model.model.embed_tokens.bits, layer.mlp.down_proj.bits) == (8, 8)
    assert (layer.mlp.gate_proj.bits, layer.self_attn.q_proj.bits) == (4, 4)


def test_float16_output_is_written_in_float16_and_stays_close(tmp_path):
    source, model_dir = convert(tmp_path, "Q8_0", dtype="float16")
    weights = tensors(model_dir / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {mx.float16, mx.uint32}
    assert_logits_match(model_dir, source)


def test_config_describes_the_llama_the_gguf_holds(tmp_path):
    _, model_dir = convert(tmp_path, "Q4_0", name="tiny-model")
    config = config_of(model_dir)
    assert {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")} == {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
    }
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert (config["rms_norm_eps"], config["rope_theta"]) == (1e-5, 10000.0)
    assert config["vocab_size"] == len(vocabulary()[0])
    assert config["rope_traditional"] is True and config["model_type"] == "llama"
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["_name_or_path"] == "tiny-model"


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    source, model_dir = convert(tmp_path, "F32", rope_freqs=True)
    assert config_of(model_dir)["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    model, _ = load(model_dir)
    periods = 10000.0 ** (np.arange(0, 16, 2) / 16) * llama3_rope_factors()
    np.testing.assert_allclose(np.array(model.model.layers[0].self_attn.rope._freqs), periods, 1e-4)
    assert_logits_match(model_dir, source)


@pytest.mark.parametrize("qtype", QTYPES)
def test_greedy_generation_runs(tmp_path, qtype):
    _, model_dir = convert(tmp_path, qtype)
    model, tokenizer = load(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert isinstance(mlx_lm.generate(model, tokenizer, prompt, max_tokens=4), str)


def test_tokenizer_round_trips_digits_spaces_and_special_tokens(tmp_path):
    _, model_dir = convert(tmp_path)
    _, tokenizer = load(model_dir)
    ids = tokenizer.encode(TEXT)
    assert tokenizer.decode(ids) == TEXT
    tokens = vocabulary()[0]
    pieces = [tokens[i] for i in ids]
    assert pieces[:6] == ["H", "ell", "o", "Ġ", "Ġthe", "Ġ"]  # merges apply, spaces kept
    assert pieces[6:10] == ["2", "0", "2", "4"]  # SmolLM2 splits digits one by one
    assert ids.count(1) == 1 and ids.count(2) == 1  # <|im_start|>, <|im_end|> stay whole


def test_control_tokens_are_special_and_user_defined_ones_are_not(tmp_path):
    _, model_dir = convert(tmp_path)
    _, tokenizer = load(model_dir)
    assert tokenizer.encode("<|im_start|>user")[0] == 1
    assert tokenizer.encode("<think>") == [vocabulary()[0].index("<think>")]
    text = tokenizer.decode(tokenizer.encode("<|im_start|><think>x"), skip_special_tokens=True)
    assert text == "<think>x"
    assert (tokenizer.eos_token, tokenizer.eos_token_ids) == ("<|im_end|>", {2})


def byte_level_meta(pre: str) -> dict[str, Any]:
    tokens, types = vocabulary()
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": MERGES,
    }


def test_llama3_pre_tokenizer_groups_digits_in_threes():
    tokenizer = build_tokenizer(byte_level_meta("llama-bpe"))
    assert tokenizer.encode("the 12345").tokens == ["t", "he", "Ġ", "12", "3", "4", "5"]


def test_unknown_pre_tokenizer_falls_back_to_gpt2_with_a_warning(caplog):
    tokenizer = build_tokenizer(byte_level_meta("brand-new"))
    assert "unknown tokenizer.ggml.pre 'brand-new'" in caplog.text
    assert tokenizer.encode(" the 12").tokens == ["Ġthe", "Ġ", "12"]


def test_sentencepiece_vocabulary_becomes_byte_fallback_bpe():
    pieces = ["▁", "h", "e", "l", "o", "▁h", "he", "ll", "▁he", "llo", "▁hello"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    tokenizer = build_tokenizer(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
        }
    )
    encoding = tokenizer.encode("hello hé")
    # BOS added (llama.cpp's default), the best-scored merges win, unknown chars -> bytes.
    assert encoding.tokens == ["<s>", "▁hello", "▁h", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(encoding.ids) == "hello hé"


def test_unsupported_architecture_is_rejected(tmp_path):
    source = write_tiny_gguf(tmp_path / "qwen.gguf", "Q8_0", arch="qwen2")
    with pytest.raises(GGUFImportError, match="architecture 'qwen2'"):
        import_gguf(source, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def write_bare_gguf(path: Path, qtype: str = "F32") -> Path:
    """A llama GGUF with no metadata, only a ``token_embd.weight`` stored as ``qtype``."""
    kind, embedding = gguf.GGMLQuantizationType[qtype], np.ones((32, 64), np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    packed = gguf.quants.quantize(embedding, kind)  # F32 stays as is
    writer.add_tensor("token_embd.weight", packed, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_tensor_type_is_rejected(tmp_path):
    source = write_bare_gguf(tmp_path / "q5.gguf", "Q5_0")
    with pytest.raises(GGUFImportError, match="token_embd.weight is Q5_0"):
        import_gguf(source, tmp_path / "model")


def test_missing_metadata_is_rejected(tmp_path):
    source = write_bare_gguf(tmp_path / "bare.gguf")
    with pytest.raises(GGUFImportError, match="lacks 'llama.embedding_length'"):
        import_gguf(source, tmp_path / "model")


def test_a_file_that_is_not_gguf_is_rejected(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFImportError, match="not a GGUF"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "model")


def test_non_empty_out_dir_is_rejected_and_left_alone(tmp_path):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(GGUFImportError, match="not an empty directory"):
        import_gguf(source, tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["keep.txt"]


def test_empty_out_dir_is_filled(tmp_path):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "model").mkdir()
    assert (import_gguf(source, tmp_path / "model") / "config.json").is_file()


def test_failure_midway_leaves_no_out_dir_and_no_partial_dir(tmp_path, monkeypatch):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_import.mx, "save_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        import_gguf(source, tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert main([str(source), str(tmp_path / "model"), "--name", "tiny"]) == 0
    assert config_of(tmp_path / "model")["_name_or_path"] == "tiny"
    assert main([str(source), str(tmp_path / "model")]) == 1
    assert "gguf_import: error:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2_gguf(bundled_models_dir: Path) -> Path:
    """The bundled model's GGUF (``SMOLLM2_GGUF`` overrides): the file the gateway keeps
    in the download cache beside ``bundled_models_dir`` (``CACHE / "downloads"``),
    fetched there if a converted model is cached but the GGUF is not."""
    if "SMOLLM2_GGUF" in os.environ:
        return Path(os.environ["SMOLLM2_GGUF"])
    return fetch_gguf(bundled_models_dir.parent / "downloads")


@pytest.mark.realmodel
def test_smollm2_gguf_converts_and_answers_paris(tmp_path, smollm2_gguf):
    start = time.perf_counter()
    model_dir = import_gguf(smollm2_gguf, tmp_path / "smollm2", name="smollm2-135m-instruct")
    print(f"converted in {time.perf_counter() - start:.2f}s")
    model, tokenizer = load(model_dir)
    assert tokenizer.encode("<|im_start|>user")[0] == 1
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    answer = mlx_lm.generate(model, tokenizer, prompt, max_tokens=20)
    print(f"answer: {answer!r}")
    assert "Paris" in answer
    assert "<|im_end|>" not in answer
