"""Speculation behind the OpenAI server: streamed and unstreamed greedy text equal the plain engine's, several
accepted tokens arrive in one streamed delta without loss, and /metrics carries plait:spec_decode_*."""

from __future__ import annotations

import httpx

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM
from plait.engine.llm import LLM
from tests.server.test_server import Server, metric, wait_idle
from tests.spec.test_speculative_engine import copy_model, make_engine, prompts  # noqa: F401 (fixtures)


def test_server_with_speculation_matches_plain_engine_and_exports_metrics(tokenizer, copy_model):  # noqa: F811
    from plait.config import EngineConfig
    from plait.engine.builder import build_engine

    cfg, weights = copy_model
    spec = {"method": "suffix", "num_speculative_tokens": 4, "adaptive": False}
    config = dict(dtype="float32", kv_cache_memory=4 << 20, batch_invariant=True)
    engine = AsyncLLM(_prebuilt=build_engine(EngineConfig(**config, speculative_config=spec), cfg, weights,
                                             tokenizer), **config, speculative_config=spec)
    plain = LLM(_prebuilt=build_engine(EngineConfig(**config), cfg, weights, tokenizer), **config)
    server = Server(engine)
    try:
        client = server.client()
        for prompt in prompts(6, seed=21):
            text = tokenizer.decode(prompt)
            want = plain.generate([text], SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)[0]
            got = client.completions.create(model="tiny", prompt=text, max_tokens=24, temperature=0)
            assert got.choices[0].text == want.outputs[0].text
            stream = client.completions.create(model="tiny", prompt=text, max_tokens=24, temperature=0,
                                               stream=True)
            assert "".join(c.choices[0].text for c in stream if c.choices) == want.outputs[0].text
        wait_idle(engine)
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "plait:spec_decode_num_draft_tokens_total") > 0
        assert metric(text, "plait:spec_decode_num_accepted_tokens_total") > 0
    finally:
        server.stop()
