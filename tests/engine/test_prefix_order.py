"""Global prefix grouping of offline batches: shuffled groups behind distinct prefixes, a pool too small to keep
every prefix cached; grouping computes each prefix once, outputs are identical, the pool is full again."""

import random

from plait import SamplingParams
from plait.engine.prefix_order import prefix_grouped_order
from tests.engine.test_llm import assert_no_leak


def test_order_puts_sharing_prompts_together():
    prompts = [[5, 1, 2], [3, 9], [5, 1, 3], [3, 8, 1], [5, 0]]
    order = prefix_grouped_order(prompts)
    assert [prompts[i] for i in order] == [[3, 8, 1], [3, 9], [5, 0], [5, 1, 2], [5, 1, 3]]


def test_grouping_computes_each_prefix_once_with_a_small_pool(make_engine):
    rng = random.Random(7)
    groups, per_group, prefix_len = 8, 6, 48
    prompts = []
    for _ in range(groups):
        prefix = [rng.randrange(3, 49152) for _ in range(prefix_len)]
        prompts += [prefix + [rng.randrange(3, 49152) for _ in range(5)] for _ in range(per_group)]
    rng.shuffle(prompts)
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    # fp32 tiny model: 2 layers x K,V x 2 heads x 16 dims x 4 bytes = 256 bytes a token; 8-token blocks.
    # 40 blocks hold about 5 prefixes' worth of running sequences, far from all 8 groups' prefixes cached at once.
    results, computed = [], []
    for grouping in (False, True):
        llm = make_engine(block_size=8, kv_cache_memory=40 * 8 * 256, max_num_seqs=4, prefix_grouping=grouping)
        outs = llm.generate(prompts, params, use_tqdm=False)
        assert [o.prompt_token_ids for o in outs] == prompts  # results stay in input order
        results.append([o.outputs[0].token_ids for o in outs])
        computed.append(llm.stats().prompt_tokens)
        assert_no_leak(llm)
    assert results[0] == results[1]
    # Grouped: each prefix (6 full blocks) once per group, then each prompt's own 5 tokens: the ideal.
    assert computed[1] == groups * prefix_len + len(prompts) * 5
    assert computed[0] > computed[1], computed
