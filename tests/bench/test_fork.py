"""`plait bench offline --workload fork` on a tiny model: the workload pair, the passes' arithmetic, the JSON."""

from __future__ import annotations

import json

import pytest

from plait.bench.fork import parse_samples
from plait.bench.offline import run_offline
from plait.bench.workloads import fork_workloads
from plait.cli import build_parser


def test_fork_workloads_share_nothing_across_prompts():
    forked, independent = fork_workloads(1000, {0, 1, 2}, num_questions=3, n=4, prompt_len=20, output_len=5, seed=1)
    assert len(forked) == 3 and len(independent) == 12
    assert forked.prompts == independent.prompts[:3]
    assert all(len(p) == 20 for p in independent.prompts)
    assert len({p[0] for p in independent.prompts}) == 12  # distinct first tokens: no shared KV block
    assert not {0, 1, 2} & {t for p in independent.prompts for t in p}
    with pytest.raises(ValueError, match="questions and samples"):
        fork_workloads(1000, (), num_questions=0)
    assert parse_samples("1,4, 16") == [1, 4, 16]
    with pytest.raises(ValueError, match="--samples"):
        parse_samples("4,x")


def test_fork_bench_end_to_end_on_tiny_model(make_engine, tmp_path, capsys):
    llm = make_engine(max_num_seqs=16, block_size=4)
    out = tmp_path / "fork.json"
    args = build_parser().parse_args(
        ["bench", "offline", "--workload", "fork", "--num-questions", "2", "--samples", "1,3", "--input-len", "18",
         "--output-len", "4", "--no-tqdm", "--output", str(out)])
    result = run_offline(args, llm=llm)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result, default=str))
    passes = saved["passes"]
    assert [(p["kind"], p["n"], p["num_samples"]) for p in passes] == [
        ("fork", 1, 2), ("independent", 1, 2), ("fork", 3, 6), ("independent", 1, 6)]
    for p in passes:
        assert p["output_tokens"] == p["num_samples"] * 4
        assert p["per_sample_tps"] == pytest.approx(p["output_tps"] / p["num_samples"])
    # Each question's prompt is computed once for all its samples (the siblings fork after it, copying its
    # partial last block); independent prompts are computed whole, each.
    assert passes[2]["prefill_tokens"] == 2 * 18 and passes[3]["prefill_tokens"] == 6 * 18
    assert [p["forks"] for p in passes] == [0, 0, 2 * 2, 0] and saved["config"]["fork_samples"] is True
    assert set(saved["ratio_output_tps"]) == {"1", "3"}
    assert "fork / indep" in capsys.readouterr().out
    assert llm.engine.scheduler.kv.all_blocks_free()
