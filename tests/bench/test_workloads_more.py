"""The sharegpt-like, shared-prefix and chat workloads, goodput arithmetic, and peak-RSS reporting (no speed asserted)."""

from __future__ import annotations

import statistics

import pytest

from plait.bench.serve import RequestResult, is_good, parse_goodput, server_peak_rss_kib, summarize
from plait.bench.workloads import (CHAT_QUESTIONS, make_workload, shared_prefix_workload, sharegpt_like_workload)
from plait.cli import build_parser

SPECIAL = {0, 1, 2, 5}


def test_sharegpt_like_is_reproducible_and_shaped():
    a = sharegpt_like_workload(400, vocab_size=1000, special_ids=SPECIAL, seed=3)
    assert a == sharegpt_like_workload(400, vocab_size=1000, special_ids=SPECIAL, seed=3)
    assert a.prompts != sharegpt_like_workload(400, vocab_size=1000, special_ids=SPECIAL, seed=4).prompts
    lens = [len(p) for p in a.prompts]
    assert all(4 <= n <= 1024 for n in lens) and all(4 <= n <= 512 for n in a.output_lens)
    assert len(set(lens)) > 50 and len(set(a.output_lens)) > 50  # a distribution, not a constant
    assert 120 <= statistics.median(lens) <= 320 and 90 <= statistics.median(a.output_lens) <= 240
    assert all(t not in SPECIAL and 0 <= t < 1000 for p in a.prompts for t in p)
    assert a == make_workload("sharegpt-like", 400, 1000, SPECIAL, seed=3)
    assert a.name == "sharegpt-like" and "sharegpt-like: 400 prompts" in a.describe()


def test_shared_prefix_groups_share_exactly_the_prefix():
    g, m, p, q = 3, 4, 20, 6
    w = shared_prefix_workload(vocab_size=200, special_ids=SPECIAL, num_groups=g, prompts_per_group=m,
                               prefix_len=p, question_len=q, output_len=9, seed=1)
    assert w == shared_prefix_workload(200, SPECIAL, g, m, p, q, 9, seed=1)
    assert w.prompts != shared_prefix_workload(200, SPECIAL, g, m, p, q, 9, seed=2).prompts
    assert len(w) == g * m and all(len(x) == p + q for x in w.prompts) and w.output_lens == [9] * (g * m)
    groups = [w.prompts[i * m:(i + 1) * m] for i in range(g)]
    for group in groups:
        assert all(x[:p] == group[0][:p] for x in group)           # same system prompt
        assert len({x[p] for x in group}) == m                     # questions diverge at the first token
    assert len({group[0][0] for group in groups}) == g             # groups' prefixes differ from the start
    assert all(t not in SPECIAL for x in w.prompts for t in x)
    via = make_workload("shared-prefix", 999, 200, SPECIAL, output_len=9, seed=1, num_groups=g,
                        prompts_per_group=m, prefix_len=p, question_len=q)
    assert via == w  # num_prompts is not used: G x M decide the count
    with pytest.raises(ValueError):
        shared_prefix_workload(200, SPECIAL, num_groups=0)


def test_shared_prefix_defaults_match_sglang():
    args = build_parser().parse_args(["bench", "offline", "--workload", "shared-prefix"])
    assert (args.num_groups, args.prompts_per_group, args.prefix_len, args.question_len, args.output_len) == \
        (16, 16, 1024, 128, 128)
    args = build_parser().parse_args(["bench", "serve", "--workload", "shared-prefix", "--num-groups", "2",
                                      "--prompts-per-group", "3", "--prefix-len", "8", "--question-len", "4"])
    assert (args.num_groups, args.prompts_per_group, args.prefix_len, args.question_len) == (2, 3, 8, 4)


def test_chat_workload_renders_the_template(tokenizer):
    if tokenizer.chat_template is None:
        pytest.skip("the default model has no chat template")
    w = make_workload("chat", 12, tokenizer.vocab_size, tokenizer.all_special_ids, output_len=7, seed=5,
                      tokenizer=tokenizer)
    assert w == make_workload("chat", 12, tokenizer.vocab_size, (), output_len=7, seed=5, tokenizer=tokenizer)
    assert w.prompts != make_workload("chat", 12, tokenizer.vocab_size, (), output_len=7, seed=6,
                                      tokenizer=tokenizer).prompts
    assert w.name == "chat" and w.output_lens == [7] * 12 and len(set(map(tuple, w.prompts))) > 1
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    first = tokenizer.encode(rendered, add_special_tokens=False)[0]
    assert first in tokenizer.all_special_ids
    for prompt in w.prompts:
        assert prompt[0] == first
        text = tokenizer.decode(prompt, skip_special_tokens=False)
        assert any(q in text for q in CHAT_QUESTIONS)
    with pytest.raises(ValueError):
        make_workload("chat", 1, 100)


def _req(ttft, latency, out, ok=True):
    return RequestResult(prompt_len=10, ok=ok, output_tokens=out, ttft=ttft, latency=latency)


def test_goodput_arithmetic():
    assert parse_goodput(["ttft:500", "TPOT:50", "e2el:2000.5"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 2000.5}
    assert parse_goodput(None) == {}
    for bad in ("ttft", "itl:5", "ttft:x", "ttft:-1"):
        with pytest.raises(ValueError):
            parse_goodput([bad])
    # TPOT = (latency - TTFT) / (out - 1)
    results = [
        _req(0.2, 1.2, 11),    # ttft 200 ms, tpot 100 ms, e2el 1200 ms
        _req(0.6, 1.1, 11),    # ttft 600 ms, tpot 50 ms, e2el 1100 ms
        _req(0.1, 0.6, 11),    # ttft 100 ms, tpot 50 ms, e2el 600 ms
        _req(0.3, 0.3, 1),     # one token: tpot counts as 0
        _req(0.0, 0.0, 0, ok=False),
    ]
    assert [is_good(r, {"ttft": 500}) for r in results] == [True, False, True, True, False]
    assert [is_good(r, {"ttft": 500, "tpot": 50}) for r in results] == [False, False, True, True, False]
    exact = _req(0.25, 1.25, 5)  # binary-exact: ttft 250 ms, tpot 250 ms, e2el 1250 ms
    assert is_good(exact, {"ttft": 250, "tpot": 250, "e2el": 1250})  # meeting the SLO exactly is good (<=)
    assert not is_good(exact, {"tpot": 249.9})
    s = summarize(results, duration=2.0, slos={"ttft": 500, "tpot": 50, "e2el": 1000})
    assert s["good_requests"] == 2 and s["request_goodput"] == pytest.approx(1.0)
    assert s["completed"] == 4 and s["request_throughput"] == pytest.approx(2.0)
    assert s["goodput_slos_ms"] == {"ttft": 500, "tpot": 50, "e2el": 1000}
    assert "request_goodput" not in summarize(results, 2.0)
    args = build_parser().parse_args(["bench", "serve", "--goodput", "ttft:500", "tpot:50"])
    assert parse_goodput(args.goodput) == {"ttft": 500.0, "tpot": 50.0}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--goodput", "latency:5"])


def test_server_peak_rss_only_for_a_known_local_pid():
    import os

    assert server_peak_rss_kib("http://127.0.0.1:8000", None) is None
    assert server_peak_rss_kib("http://example.com:8000", os.getpid()) is None
    if os.path.exists(f"/proc/{os.getpid()}/status"):
        assert server_peak_rss_kib("http://localhost:8000", os.getpid()) > 0


def test_offline_reports_peak_rss(make_engine, tmp_path):
    from plait.bench.offline import format_result, run_offline

    llm = make_engine(max_num_seqs=4)
    args = build_parser().parse_args(["bench", "offline", "--workload", "shared-prefix", "--num-groups", "2",
                                      "--prompts-per-group", "2", "--prefix-len", "8", "--question-len", "4",
                                      "--output-len", "3", "--no-tqdm", "--no-warmup",
                                      "--output", str(tmp_path / "o.json")])
    result = run_offline(args, llm=llm)
    assert result["peak_rss"]["kib"] > 0 and result["peak_rss"]["includes"] == ["plait"]
    assert result["config"]["shared_prefix"]["prefix_len"] == 8
    assert result["plait"]["runs"][0]["output_tokens"] == 12
    assert "peak RSS" in format_result(result)
