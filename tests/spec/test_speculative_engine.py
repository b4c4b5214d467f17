"""Speculative decoding through the public API on a tiny random model: greedy outputs (tokens and logprobs) are
exactly the ones without speculation, with batch-invariant numerics, across batch sizes, chunked prefill,
prefix-cache hits, preemption, stop strings and n > 1; seeded sampling is reproducible; no KV block leaks."""

from __future__ import annotations

import random

import pytest
import torch

from plait import LLM, SamplingParams
from plait.config import EngineConfig
from plait.engine.builder import build_engine
from plait.runner.attention import KVCache
from tests.helpers import random_weights, tiny_config


@pytest.fixture(scope="module")
def copy_model():
    """A tiny random model that sometimes repeats itself (tied head, layers scaled up from pure copying), so
    drafts are sometimes right and sometimes wrong."""
    cfg = tiny_config("llama")
    weights = {k: v * 2 if "layers" in k and "norm" not in k else v for k, v in random_weights(cfg, seed=1).items()}
    return cfg, weights


@pytest.fixture
def make_engine(tokenizer, copy_model):
    def make(**config):
        config.setdefault("dtype", "float32")
        config.setdefault("kv_cache_memory", 4 << 20)
        cfg, weights = copy_model
        return LLM(_prebuilt=build_engine(EngineConfig(**config), cfg, weights, tokenizer), **config)

    return make

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=2)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    """Prompts that repeat themselves (so prompt lookup finds drafts, some right, most wrong on a random model)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        motif = [rng.randrange(3, 2000) for _ in range(rng.randint(3, 8))]
        out.append((motif * rng.randint(2, 5) + [rng.randrange(3, 2000) for _ in range(rng.randint(0, 6))])[:40])
    return out


def signature(out) -> list[tuple]:
    return [(tuple(c.token_ids), c.text, c.finish_reason,
             tuple(tuple(sorted((t, lp.logprob) for t, lp in d.items())) for d in (c.logprobs or [])))
            for c in out.outputs]


def run(make, spec, batch, params=GREEDY, **config):
    llm = make(batch_invariant=True, speculative_config=spec, **config)
    outs = llm.generate([list(p) for p in batch], params, use_tqdm=False)
    assert llm.engine.scheduler.kv.all_blocks_free()
    return [signature(o) for o in outs], llm.stats()


ALWAYS = {"num_speculative_tokens": 4, "adaptive": False}  # draft wherever a match exists: most verification


@pytest.mark.parametrize("method", ["ngram", "suffix"])
@pytest.mark.parametrize("size", [1, 8, 32])
def test_greedy_outputs_identical_with_speculation(make_engine, method, size):
    batch = prompts(size, seed=size)
    plain, _ = run(make_engine, None, batch)
    spec, stats = run(make_engine, {"method": method, **ALWAYS}, batch)
    assert spec == plain
    assert stats.spec.num_draft_tokens > 0
    if size > 1:
        assert stats.spec.num_accepted_tokens > 0


def test_greedy_identical_under_chunked_prefill_prefix_hits_and_preemption(make_engine, copy_model):
    cfg, _ = copy_model
    block = KVCache.bytes_per_block(cfg.num_layers, 16, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    batch = prompts(12, seed=3)
    batch += [p[:20] + [7, 8, 9] for p in batch[:4]]  # prefix-cache hits on the first prompts' blocks
    small = dict(max_num_batched_tokens=24, kv_cache_memory=10 * block)
    plain, plain_stats = run(make_engine, None, batch, **small)
    spec, stats = run(make_engine, {"method": "ngram", **ALWAYS}, batch, **small)
    assert spec == plain
    assert plain_stats.preemptions > 0 and stats.preemptions > 0, "the small pool was meant to preempt"
    assert stats.prefix_cache_hits > 0
    assert stats.spec.num_accepted_tokens > 0


def test_stop_strings_min_tokens_and_n_greater_than_one(make_engine, tokenizer):
    batch = prompts(6, seed=5)
    plain_text = run(make_engine, None, batch[:1])[0][0][0][1]
    stop = plain_text[len(plain_text) // 2: len(plain_text) // 2 + 3]
    for params in (SamplingParams(max_tokens=24, temperature=0, stop=[stop], min_tokens=2),
                   SamplingParams(max_tokens=20, temperature=0, n=3),
                   SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[batch[0][5]], min_tokens=3)):
        plain, _ = run(make_engine, None, batch, params)
        for method in ("ngram", "suffix"):
            spec, _ = run(make_engine, {"method": method, **ALWAYS}, batch, params)
            assert spec == plain, (method, params)


def test_seeded_sampling_reproducible_and_exact_lengths(make_engine):
    batch = prompts(8, seed=7)
    params = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True)
    first, stats = run(make_engine, {"method": "ngram", **ALWAYS}, batch, params)
    again, _ = run(make_engine, {"method": "ngram", **ALWAYS}, batch, params)
    assert first == again
    assert all(len(s[0][0]) == 20 for s in first)
    assert stats.spec.num_draft_tokens > 0


def test_aborts_leak_nothing_and_per_request_opt_out(make_engine):
    llm = make_engine(speculative_config={"method": "ngram", **ALWAYS})
    core = llm.engine
    batch = prompts(6, seed=9)
    for i, p in enumerate(batch):
        core.add_request(f"r{i}", p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    for _ in range(4):
        core.step()
    core.abort("r1")
    core.abort("r4")
    while core.has_unfinished():
        core.step()
    assert core.scheduler.kv.all_blocks_free()
    drafted = llm.stats().spec.num_draft_tokens
    llm.generate([list(p) for p in batch],
                 SamplingParams(max_tokens=16, temperature=0, speculative=False), use_tqdm=False)
    assert llm.stats().spec.num_draft_tokens == drafted  # opted out: nothing drafted


def test_bad_speculative_config_is_a_clear_error():
    for bad, field in (({"method": "medusa"}, "method"), ({"method": "ngram", "num_speculative_tokens": 0},
                                                          "num_speculative_tokens"),
                       ({"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup_max"),
                       ({"method": "ngram", "bogus": 1}, "bogus"), ({}, "method"), ("{not json", "JSON")):
        with pytest.raises(ValueError, match=field):
            EngineConfig(speculative_config=bad)
    with pytest.raises(ValueError, match="speculative"):
        SamplingParams(speculative="yes")


def test_cli_flag_reaches_the_engine_config():
    from plait.cli import build_parser, engine_kwargs

    args = build_parser().parse_args(["generate", "hi", "--speculative-config", '{"method": "suffix"}'])
    assert EngineConfig(**engine_kwargs(args)).speculative_config.method == "suffix"


@pytest.mark.parametrize("spec", [{"method": "early_exit", "exit_layer": 1},
                                  {"method": "draft_model", "model": "tiny-draft"}])
def test_model_drafters_keep_greedy_outputs(tokenizer, copy_model, spec):
    """early_exit (the target's first layer) and draft_model (a 1-layer model sharing the vocabulary, its KV in a
    cache indexed by the target's block tables): greedy tokens identical, drafts accepted, KV all returned, also
    under preemption and prefix-cache hits."""
    cfg, weights = copy_model
    draft_cfg = tiny_config("llama", num_layers=1)
    draft = (draft_cfg, {k: v for k, v in weights.items() if "layers.1." not in k})  # the target's first layer
    block = KVCache.bytes_per_block(cfg.num_layers, 16, cfg.num_kv_heads, cfg.head_dim, torch.float32)
    batch = prompts(10, seed=13)
    batch += [p[:20] + [7, 8, 9] for p in batch[:3]]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=2)

    def run_once(speculative):
        config = dict(dtype="float32", kv_cache_memory=12 * block, max_num_batched_tokens=32,
                      batch_invariant=True, speculative_config=speculative)
        llm = LLM(_prebuilt=build_engine(EngineConfig(**config), cfg, weights, tokenizer, draft=draft), **config)
        outs = llm.generate([list(p) for p in batch], params, use_tqdm=False)
        assert llm.engine.scheduler.kv.all_blocks_free()
        return [signature(o) for o in outs], llm.stats()

    plain, _ = run_once(None)
    got, stats = run_once({**spec, **ALWAYS})
    assert got == plain
    assert stats.preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.spec.num_draft_tokens > 0 and stats.spec.num_accepted_tokens > 0


@pytest.mark.parametrize("spec", [{"method": "early_exit", "exit_layer": 1},
                                  {"method": "draft_model", "model": "tiny-draft"}])
def test_forked_samples_keep_outputs_and_drafts_of_forks_off(tokenizer, copy_model, spec):
    """n > 1 samples fork after the prompt; draft_model's own cache gets the same copy of the partial last block as
    the target's, so every sample drafts exactly what it drafts when it computes the prompt itself (forks off)."""
    cfg, weights = copy_model
    draft = (tiny_config("llama", num_layers=1), {k: v for k, v in weights.items() if "layers.1." not in k})
    batch = [p + [11, 12, 13] for p in prompts(4, seed=17)]  # lengths off block boundaries: partial last blocks
    params = SamplingParams(n=4, max_tokens=16, temperature=0.8, top_k=50, seed=3, ignore_eos=True, logprobs=1)

    def run_once(fork_samples):
        config = dict(dtype="float32", kv_cache_memory=4 << 20, batch_invariant=True, fork_samples=fork_samples,
                      speculative_config={**spec, **ALWAYS})
        llm = LLM(_prebuilt=build_engine(EngineConfig(**config), cfg, weights, tokenizer, draft=draft), **config)
        outs = llm.generate([list(p) for p in batch], params, use_tqdm=False)
        assert llm.engine.scheduler.kv.all_blocks_free()
        return [signature(o) for o in outs], llm.stats()

    (forked, stats), (plain, plain_stats) = run_once(True), run_once(False)
    assert forked == plain
    assert stats.forks == 3 * len(batch) and plain_stats.forks == 0
    assert stats.spec.num_accepted_tokens > 0
    assert (stats.spec.num_draft_tokens, stats.spec.num_accepted_tokens) == (
        plain_stats.spec.num_draft_tokens, plain_stats.spec.num_accepted_tokens)


def test_model_drafter_settings_are_checked(tokenizer, copy_model):
    cfg, weights = copy_model
    with pytest.raises(ValueError, match="exit_layer"):
        build_engine(EngineConfig(dtype="float32", kv_cache_memory=4 << 20,
                                  speculative_config={"method": "early_exit", "exit_layer": 2}), cfg, weights, tokenizer)
    with pytest.raises(ValueError, match="model"):
        EngineConfig(speculative_config={"method": "draft_model"})
    other = tiny_config("llama", vocab_size=1000, num_layers=1)
    with pytest.raises(ValueError, match="vocabulary"):
        build_engine(EngineConfig(dtype="float32", kv_cache_memory=4 << 20,
                                  speculative_config={"method": "draft_model", "model": "x"}), cfg, weights,
                     tokenizer, draft=(other, random_weights(other)))
