"""Two engines for step routing: the shared tiny model (small) and one with other random weights (large)."""

import pytest

from plait.config import EngineConfig
from plait.engine.async_llm import AsyncLLM
from tests.helpers import random_weights


@pytest.fixture
def engines(make_engine, tokenizer, tiny_model):
    """(small, large): two tiny random AsyncLLMs with the same tokenizer and different weights."""
    from plait.engine.builder import build_engine

    small = make_engine(AsyncLLM)
    cfg, _ = tiny_model
    config = dict(dtype="float32", kv_cache_memory=4 << 20)
    large = AsyncLLM(_prebuilt=build_engine(EngineConfig(**config), cfg, random_weights(cfg, seed=1), tokenizer),
                     **config)
    yield small, large
    large.shutdown()
