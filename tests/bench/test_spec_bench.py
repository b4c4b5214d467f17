"""`plait bench spec` pieces: the workload is fixed and seeded, the replay figure counts tokens per step right,
and bad flags are clear errors."""

from __future__ import annotations

import pytest

from plait.bench.spec import _int_list
from plait.bench.spec_workloads import SOURCES, TASKS, copy_workload_texts, ngram_replay


def test_copy_workload_is_every_task_text_pair_in_a_seeded_order():
    texts = copy_workload_texts(len(TASKS) * len(SOURCES), seed=0)
    assert len(set(texts)) == len(TASKS) * len(SOURCES)
    assert texts == copy_workload_texts(len(texts), seed=0)
    assert texts != copy_workload_texts(len(texts), seed=1)
    assert copy_workload_texts(3, seed=0) == texts[:3]


def test_replay_counts_tokens_per_target_step():
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # The output copies the prompt: after the first token (from the prefill) each step drafts 4 right tokens.
    assert ngram_replay(prompt, [1, 2, 3, 4, 5, 6, 7, 8, 9], k=4) == pytest.approx(8 / 2)
    assert ngram_replay(prompt, [20, 21, 22, 23], k=4) == 1.0  # nothing to copy: one token a step


def test_bad_concurrency_is_a_clear_error():
    with pytest.raises(ValueError, match="--concurrency"):
        _int_list("1,x", "concurrency")
    with pytest.raises(ValueError, match="--concurrency"):
        _int_list("0", "concurrency")


def test_samples_need_a_temperature():
    from plait.bench.spec import run_spec_bench
    from plait.cli import build_parser

    args = build_parser().parse_args(["bench", "spec", "--samples", "4"])
    assert args.samples == 4 and args.temperature == 0.0
    with pytest.raises(ValueError, match="--temperature"):
        run_spec_bench(args)
