"""LLM(..., data_parallel_size=2) on a local Ray cluster: same greedy tokens as one engine, input order kept."""

from __future__ import annotations

import sys

import pytest

from plait.engine.llm import LLM
from plait.params import SamplingParams
from tests.distributed.tiny_engine import TINY_SETTINGS, build_tiny

pytestmark = pytest.mark.ray


def _prompts():
    system = "You are a careful assistant. Answer briefly and precisely, and show your work. " * 2
    return [system + f"Question {i}: what is {i} plus {i}?" for i in range(6)] + \
        [f"Unrelated prompt number {i} about rivers" for i in range(4)]


def test_data_parallel_matches_one_engine(ray_cluster, make_engine):
    params = SamplingParams(max_tokens=8, temperature=0.0)
    prompts = _prompts()
    expected = make_engine(num_threads=1).generate(prompts, params, use_tqdm=False)
    llm = LLM(data_parallel_size=2, _engine_factory=build_tiny, **TINY_SETTINGS)
    try:
        assert llm.data_parallel_size == 2
        outs = llm.generate(prompts, params)
        assert [o.prompt for o in outs] == prompts
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in expected]
        assert [o.outputs[0].text for o in outs] == [o.outputs[0].text for o in expected]
        assert len({o.request_id for o in outs}) == len(prompts)
        stats = llm.stats()
        assert stats.generated_tokens == sum(len(o.outputs[0].token_ids) for o in outs)
        # the six prompts sharing the system prompt went to one replica: its blocks were computed once
        assert stats.prefix_cache_hits > 0
        assert llm.all_blocks_free()
        # bad input fails before any replica sees it, with the engine's own message
        with pytest.raises(ValueError, match="context length"):
            llm.generate([[1] * 600], params)
        chat = llm.chat([{"role": "user", "content": "hi"}], params)
        assert len(chat) == 1 and chat[0].finished
    finally:
        llm.shutdown()


def test_data_parallel_size_is_validated():
    with pytest.raises(ValueError, match="data_parallel_size must be an integer >= 1"):
        LLM(data_parallel_size=0)


def test_without_ray_the_feature_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"plait\[ray\]"):
        LLM(data_parallel_size=2, **TINY_SETTINGS)
