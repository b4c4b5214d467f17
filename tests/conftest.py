"""Shared fixtures: the real tokenizer (from the default GGUF's metadata) and tiny random-weight engines."""

from __future__ import annotations

import pytest

from plait.config import EngineConfig
from tests.helpers import random_weights, tiny_config


@pytest.fixture(scope="session")
def tokenizer():
    from plait.loading.gguf_file import read_gguf
    from plait.loading.sources import resolve_model
    from plait.loading.tokenizer import Tokenizer

    return Tokenizer.from_gguf_metadata(read_gguf(resolve_model(None)).metadata)


@pytest.fixture(scope="session")
def tiny_model():
    # Untied head: a tied random head mostly repeats the input token, which makes dull tests.
    cfg = tiny_config("llama", tie_word_embeddings=False)
    return cfg, random_weights(cfg, seed=0)


@pytest.fixture
def make_engine(tokenizer, tiny_model):
    """make_engine(cls=LLM, **engine_config) -> an LLM/AsyncLLM over the tiny model in fp32."""
    from plait.engine.builder import build_engine
    from plait.engine.llm import LLM

    made = []

    def make(cls=LLM, **config):
        config.setdefault("dtype", "float32")
        config.setdefault("kv_cache_memory", 4 << 20)
        extra = {k: config.pop(k) for k in ("max_waiting_requests",) if k in config}
        cfg, weights = tiny_model
        built = build_engine(EngineConfig(**config), cfg, weights, tokenizer)
        engine = cls(_prebuilt=built, **extra, **config)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        if hasattr(engine, "shutdown"):
            engine.shutdown()
