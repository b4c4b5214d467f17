"""batch_invariant=True through the public API: a request's tokens and logprobs are bitwise the same alone, inside
batches of mixed requests arriving at staggered steps, after a prefix-cache hit and after a preemption."""

from __future__ import annotations

import random

import pytest

from plait import LLM, SamplingParams
import torch

from plait.config import EngineConfig
from plait.engine.builder import build_engine
from plait.runner.attention import KVCache

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=3)
SEEDED = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True, logprobs=3)


def run_staggered(llm: LLM, jobs: list[tuple[int, list[int], SamplingParams]]) -> list:
    """Drive the engine step by step, adding job i = (arrival step, prompt ids, params) at its step; returns the
    final outputs in job order."""
    from plait.engine.output_processor import RequestState

    core = llm.engine
    pending = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    states: dict[str, RequestState] = {}
    step = 0
    while pending or core.has_unfinished():
        while pending and jobs[pending[0]][0] <= step:
            i = pending.pop(0)
            core.add_request(f"job{i}", jobs[i][1], jobs[i][2])
            states[f"job{i}"] = RequestState(f"job{i}", None, jobs[i][1], jobs[i][2], llm.tokenizer)
        for out in core.step():  # new tokens only: the frontend's RequestState accumulates them
            for index, stop in states[out.request_id].process(out):
                core.finish_sample(out.request_id, index, stop)
        step += 1
    return [states[f"job{i}"].output("final") for i in range(len(jobs))]


def signature(out) -> tuple:
    """Tokens plus every logprob's exact float: equal signatures mean equal logits to the last bit (as far as the
    top-3 logprobs and the chosen token's show them)."""
    c = out.outputs[0]
    return tuple(c.token_ids), tuple(tuple(sorted((t, lp.logprob) for t, lp in d.items())) for d in c.logprobs)


def neighbours(rng: random.Random, count: int, vocab: int, max_prompt: int) -> list[tuple[int, list[int], SamplingParams]]:
    """`count` mixed requests (greedy, seeded, unseeded, penalties; short and long prompts) at staggered steps."""
    kinds = [SamplingParams(max_tokens=rng.randint(3, 14), temperature=0, ignore_eos=True),
             SamplingParams(max_tokens=rng.randint(3, 14), temperature=1.0, top_k=40, ignore_eos=True),
             SamplingParams(max_tokens=rng.randint(3, 14), temperature=0.7, seed=rng.randrange(1000),
                            repetition_penalty=1.1, ignore_eos=True)]
    return [(rng.randint(0, 6), [rng.randrange(3, vocab) for _ in range(rng.randint(1, max_prompt))], kinds[i % 3])
            for i in range(count)]


def check_invariance(make, prompt: list[int], vocab: int, batch_sizes, max_prompt: int, prefix_len: int) -> None:
    alone = {name: signature(run_staggered(make(), [(0, prompt, p)])[0]) for name, p in
             (("greedy", GREEDY), ("seeded", SEEDED))}
    rng = random.Random(0)
    for size in batch_sizes:
        llm = make()
        jobs = neighbours(rng, size, vocab, max_prompt)
        jobs += [(rng.randint(0, 4), prompt, GREEDY), (rng.randint(0, 4), prompt, SEEDED)]
        outs = run_staggered(llm, jobs)
        assert signature(outs[-2]) == alone["greedy"], f"greedy inside a batch of {size}"
        assert signature(outs[-1]) == alone["seeded"], f"seeded inside a batch of {size}"
        assert llm.engine.scheduler.kv.all_blocks_free()

    # Prefix-cache hit: another request computed the prompt's first blocks; this one reads them from the cache.
    llm = make()
    run_staggered(llm, [(0, prompt[:prefix_len] + [5, 6, 7], GREEDY)])
    hits_before = llm.stats().prefix_cache_hits
    outs = run_staggered(llm, [(0, prompt, GREEDY), (1, prompt, SEEDED)])
    assert [signature(o) for o in outs] == [alone["greedy"], alone["seeded"]], "after a prefix-cache hit"
    assert llm.stats().prefix_cache_hits > hits_before

    # Preemption: a pool too small for everyone forces recompute of some requests mid-generation.
    llm = make(small_pool=True)
    jobs = [(0, [rng.randrange(3, vocab) for _ in range(max_prompt)], GREEDY) for _ in range(6)]
    jobs += [(1, prompt, GREEDY), (1, prompt, SEEDED)]
    outs = run_staggered(llm, jobs)
    assert llm.stats().preemptions > 0, "the small pool was meant to force a preemption"
    assert [signature(o) for o in outs[-2:]] == [alone["greedy"], alone["seeded"]], "after preemption"
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_tiny_model_is_batch_invariant_alone_in_batches_after_hits_and_preemption(make_engine, tiny_model):
    cfg, _ = tiny_model
    block = KVCache.bytes_per_block(cfg.num_layers, 16, cfg.num_kv_heads, cfg.head_dim, torch.float32)

    def make(small_pool: bool = False):
        # 10 blocks of 16 tokens hold two or three of the 52-token requests: the rest wait or get preempted.
        return make_engine(batch_invariant=True, max_num_batched_tokens=32,
                           kv_cache_memory=10 * block if small_pool else 4 << 20)

    prompt = [random.Random(9).randrange(3, cfg.vocab_size) for _ in range(40)]
    check_invariance(make, prompt, cfg.vocab_size, (8, 24), max_prompt=40, prefix_len=32)


def test_batch_invariant_refuses_what_it_cannot_keep(tokenizer, tiny_model):
    cfg, weights = tiny_model
    with pytest.raises(ValueError, match="batch_invariant"):
        build_engine(EngineConfig(dtype="float32", kv_cache_memory=1 << 20, native_kernels=False,
                                  batch_invariant=True), cfg, weights, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_default_model_is_batch_invariant(dtype):
    """The real default model: greedy and seeded outputs alone == inside 8 / 32 / 64 mixed requests arriving at
    staggered steps == after a prefix-cache hit == after preemption."""
    built: dict[bool, LLM] = {}

    def make(small_pool: bool = False) -> LLM:
        # One engine per pool size, reused: later runs also read earlier runs' blocks from the prefix cache.
        # 30 layers x 3 kv heads x 64 dims x K and V: 23 KiB a token in bf16, so 12 MiB holds ~530 tokens.
        if small_pool not in built:
            width = 2 if dtype == "bfloat16" else 4
            built[small_pool] = LLM(dtype=dtype, batch_invariant=True, max_num_batched_tokens=256,
                                    kv_cache_memory=(6 << 20) * width if small_pool else 256 << 20)
        return built[small_pool]

    llm = make()
    prompt = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. Write a short poem about the sea, "
                                  "the wind and the boats that sail at dawn.")
    check_invariance(make, prompt, 49152, (8, 32, 64), max_prompt=80, prefix_len=16)


def test_cli_flag_reaches_the_engine_config():
    from plait.cli import build_parser, engine_kwargs

    assert engine_kwargs(build_parser().parse_args(["generate", "hi", "--batch-invariant"]))["batch_invariant"]
    assert not engine_kwargs(build_parser().parse_args(["generate", "hi"]))["batch_invariant"]
    assert EngineConfig(**engine_kwargs(build_parser().parse_args(["generate", "hi", "--batch-invariant"]))
                        ).batch_invariant
