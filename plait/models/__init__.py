"""Model families. Every supported architecture maps to one module; Llama covers SmolLM2, Mistral, Qwen2/3;
gemma3.py covers Gemma 3's text models."""

from __future__ import annotations

from plait.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "smollm", "gemma3")


def build_model(config: ModelConfig, dtype=None):
    """An empty model of the family `config.architecture` names, parameters in `dtype` (default float32);
    weights are loaded afterwards with `load_weights`."""
    arch = config.architecture.lower()
    if not any(arch.startswith(name) for name in SUPPORTED_ARCHITECTURES):
        raise ValueError(f"architecture {config.architecture!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    import torch

    if arch.startswith("gemma3"):
        from plait.models.gemma3 import Gemma3ForCausalLM

        return Gemma3ForCausalLM(config, dtype or torch.float32)
    from plait.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(config, dtype or torch.float32)
