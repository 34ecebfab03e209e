"""Model directories whose size is whatever a test says, without the bytes.

Memory estimates read only the safetensors header, so a header that declares
4 GB of tensor data makes a 4 GB model for the registry's arithmetic.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def fake_model_dir(path: Path, weights: int, *, layers: int = 2, context: int = 1024) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "max_position_embeddings": context,
    }
    (path / "config.json").write_text(json.dumps(config))
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [weights], "data_offsets": [0, weights]}}
    ).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return path
