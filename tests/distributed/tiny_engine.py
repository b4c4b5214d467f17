"""The engine factory Ray replicas use in tests: the same tiny random model as tests/conftest.py's make_engine.

It runs inside the replica actors (imported there by name: the worktree root is on the workers' path), so
every replica builds identical weights from the same seed.
"""

from __future__ import annotations

from plait.config import EngineConfig

TINY_SETTINGS = dict(dtype="float32", kv_cache_memory=4 << 20, num_threads=1)


def build_tiny(config: EngineConfig):
    from plait.engine.builder import build_engine
    from plait.loading.gguf_file import read_gguf
    from plait.loading.sources import resolve_model
    from plait.loading.tokenizer import Tokenizer
    from tests.helpers import random_weights, tiny_config

    cfg = tiny_config("llama", tie_word_embeddings=False)
    tokenizer = Tokenizer.from_gguf_metadata(read_gguf(resolve_model(None)).metadata)
    return build_engine(config, cfg, random_weights(cfg, seed=0), tokenizer)
