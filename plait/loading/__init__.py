"""Model loading: GGUF files and HuggingFace directories -> config, float weights, tokenizer.

Importing this package is cheap; torch, gguf and tokenizers are imported when a model is loaded.
"""

from plait.loading.sources import LoadedModel, load_model, pull_default_model, resolve_model
from plait.loading.tokenizer import Tokenizer

__all__ = ["LoadedModel", "Tokenizer", "load_model", "pull_default_model", "resolve_model"]
