"""Load a HuggingFace model directory: config.json, *.safetensors (one file or sharded), tokenizer.

The tensor names in a Llama-family checkpoint are already the names plait's model uses, so this is
mostly reading files: pick the shards, drop buffers that are not weights, cast to the wanted dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.config import ModelConfig
from plait.loading.gemma3_config import gemma3_config_from_hf, is_gemma3_hf

if TYPE_CHECKING:
    import torch

    from plait.loading.tokenizer import Tokenizer

# generation_config.json keys that are sampling defaults (the rest is token-id bookkeeping).
SAMPLING_KEYS = (
    "do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "max_new_tokens", "max_length",
)
INDEX_FILE = "model.safetensors.index.json"


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_hf_dir(
    path: str | Path, dtype: "torch.dtype | None" = None
) -> tuple[ModelConfig, dict[str, "torch.Tensor"], "Tokenizer", dict[str, Any]]:
    """HF directory -> (config, weights in `dtype` (float32 by default), tokenizer, generation defaults)."""
    import torch

    from plait.loading.tokenizer import Tokenizer

    path = Path(path)
    hf_config = _read_json(path / "config.json")
    if hf_config.get("quantization_config"):
        method = hf_config["quantization_config"].get("quant_method", "?")
        raise NotImplementedError(f"{path}: checkpoints quantized with {method!r} are not supported; "
                                  "use an unquantized checkpoint or a GGUF file")
    if is_gemma3_hf(hf_config):
        config = gemma3_config_from_hf(hf_config)
    else:
        config = ModelConfig.from_hf(hf_config)
    gen = _read_json(path / "generation_config.json")

    eos_ids = _id_list(gen.get("eos_token_id")) + config.eos_token_ids
    tokenizer = Tokenizer.from_hf_dir(path, eos_token_ids=eos_ids)
    config.eos_token_ids = list(tokenizer.eos_token_ids)
    if config.bos_token_id is None:
        config.bos_token_id = gen.get("bos_token_id", tokenizer.bos_token_id)

    weights = read_safetensors(path, dtype or torch.float32)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    defaults = {k: gen[k] for k in SAMPLING_KEYS if gen.get(k) is not None}
    return config, weights, tokenizer, defaults


def read_safetensors(path: Path, dtype: "torch.dtype") -> dict[str, "torch.Tensor"]:
    """Every tensor of the checkpoint in `path` (sharded or not), cast to `dtype`."""
    from safetensors.torch import load_file

    weights = {}
    for file in safetensors_files(path):
        for name, tensor in load_file(str(file)).items():
            if name.endswith("rotary_emb.inv_freq"):  # a buffer old checkpoints saved; recomputed by the model
                continue
            weights[name] = tensor.to(dtype)
    return weights


def safetensors_files(path: Path) -> list[Path]:
    """The shard files named by the index, or the directory's *.safetensors files."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index)["weight_map"]
        files = [path / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors files (plait does not read pytorch_model.bin)")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: shard files listed in {INDEX_FILE} are missing: {missing}")
    return files


def _read_json(file: Path) -> dict:
    return json.loads(file.read_text()) if file.is_file() else {}


def _id_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)
