"""BackgroundLLM: submit/poll/result/abort from plain threads, backpressure, many threads at once, shutdown."""

import random
import threading
import time

import pytest

from plait import BackgroundLLM, SamplingParams
from plait.engine.background import EngineDeadError, QueueFullError
from tests.engine.test_llm import prompts

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
LONG = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)


def wait_kv_free(engine, timeout=10.0):
    core = engine.async_llm.engine
    for _ in range(int(timeout / 0.01)):
        if core.scheduler.kv.all_blocks_free() and not core.has_unfinished():
            return
        time.sleep(0.01)
    raise AssertionError(f"KV not free after {timeout} s: {engine.stats()}")


def test_submit_returns_at_once_and_result_matches_offline(make_engine):
    from plait.engine.llm import LLM

    batch = prompts(5, seed=3)
    expected = make_engine(LLM).generate(batch, GREEDY, use_tqdm=False)
    engine = make_engine(BackgroundLLM)
    ids = [engine.submit(p, GREEDY) for p in batch]
    assert len(set(ids)) == 5
    results = [engine.result(i, timeout=30) for i in ids]
    assert [r.outputs[0].token_ids for r in results] == [e.outputs[0].token_ids for e in expected]
    assert [r.outputs[0].text for r in results] == [e.outputs[0].text for e in expected]
    assert [r.request_id for r in results] == ids
    assert engine.poll() == []  # result() collected them: poll never returns them again
    with pytest.raises(ValueError, match="already collected"):
        engine.result(ids[0])
    wait_kv_free(engine)


def test_poll_returns_each_final_once_and_stream_deltas_add_up(make_engine):
    engine = make_engine(BackgroundLLM)
    batch = prompts(4, seed=5)
    plain = engine.submit(batch[0], GREEDY)
    streamed = engine.submit(batch[0], GREEDY, stream=True)
    seen: dict[str, list] = {plain: [], streamed: []}
    deadline = time.monotonic() + 30
    while not all(outs and outs[-1].finished for outs in seen.values()):
        assert time.monotonic() < deadline
        for out in engine.poll(timeout=0.5):
            seen[out.request_id].append(out)
    assert len(seen[plain]) == 1 and seen[plain][0].finished
    deltas = seen[streamed]
    assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert sum((d.outputs[0].token_ids for d in deltas), []) == seen[plain][0].outputs[0].token_ids
    assert "".join(d.outputs[0].text for d in deltas) == seen[plain][0].outputs[0].text
    assert engine.poll(timeout=0.05) == []

    # result() on a streamed request returns the whole output and takes its deltas out of the inbox.
    rid = engine.submit(batch[1], GREEDY, stream=True)
    full = engine.result(rid, timeout=30)
    assert len(full.outputs[0].token_ids) == 12
    assert engine.poll() == []


def test_poll_does_not_wait_and_inboxes_are_per_thread_or_named(make_engine):
    engine = make_engine(BackgroundLLM)
    t0 = time.monotonic()
    assert engine.poll() == []
    assert time.monotonic() - t0 < 0.05
    got = {}

    def worker():
        rid = engine.submit(prompts(1, seed=8)[0], GREEDY)
        named = engine.submit(prompts(1, seed=9)[0], GREEDY, inbox="shared")
        got["ids"] = (rid, named)
        got["mine"] = engine.poll(timeout=30)

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    rid, named = got["ids"]
    assert [o.request_id for o in got["mine"]] == [rid]
    assert engine.poll(timeout=0.2) == []  # the main thread's inbox never sees the worker's requests
    assert [o.request_id for o in engine.poll(timeout=30, inbox="shared")] == [named]


def test_abort_ends_with_abort_reason_and_frees_kv(make_engine):
    engine = make_engine(BackgroundLLM)
    rid = engine.submit(prompts(1, seed=1)[0], LONG, stream=True)
    first = engine.poll(timeout=30)
    assert first and not first[0].finished
    engine.abort(rid)
    out = engine.result(rid, timeout=30)
    assert out.finished and out.outputs[0].finish_reason == "abort"
    engine.abort(rid)  # finished and collected: a no-op
    engine.abort("never-submitted")
    wait_kv_free(engine)


def test_bad_input_and_ids(make_engine):
    engine = make_engine(BackgroundLLM)
    with pytest.raises(ValueError, match="empty"):
        engine.submit("", GREEDY)
    with pytest.raises(ValueError, match="timeout"):
        engine.submit("hi", GREEDY, timeout=-1)
    rid = engine.submit(prompts(1)[0], LONG, request_id="mine")
    with pytest.raises(ValueError, match="already in use"):
        engine.submit(prompts(1)[0], GREEDY, request_id="mine")
    with pytest.raises(ValueError, match="unknown"):
        engine.result("nope")
    with pytest.raises(TimeoutError):
        engine.result(rid, timeout=0.05)
    engine.abort(rid)
    engine.result(rid, timeout=30)
    # Collected: the id is free again, and a refused submit never reserved its id.
    with pytest.raises(ValueError, match="empty"):
        engine.submit("", GREEDY, request_id="again")
    assert engine.result(engine.submit(prompts(1)[0], GREEDY, request_id="again"), timeout=30).finished
    assert engine.result(engine.submit(prompts(1)[0], GREEDY, request_id="mine"), timeout=30).finished


def test_queue_full_raises_or_blocks(make_engine):
    engine = make_engine(BackgroundLLM, max_waiting_requests=2)
    a = engine.submit(prompts(1)[0], LONG)
    engine.submit(prompts(1, seed=1)[0], LONG)
    with pytest.raises(QueueFullError):
        engine.submit(prompts(1, seed=2)[0], GREEDY)
    t0 = time.monotonic()
    with pytest.raises(QueueFullError):
        engine.submit(prompts(1, seed=2)[0], GREEDY, block=True, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2.0
    threading.Timer(0.2, engine.abort, args=(a,)).start()
    rid = engine.submit(prompts(1, seed=2)[0], GREEDY, block=True)  # waits for the abort to make room
    assert engine.result(rid, timeout=30).outputs[0].finish_reason == "length"


def test_many_threads_submit_poll_and_abort_concurrently(make_engine):
    """Thousands of requests from 8 threads, random aborts (own and others'), streams and plain, a bounded queue
    that makes submitters block: every request finishes exactly once, in its own thread's inbox, and every KV
    block comes back."""
    engine = make_engine(BackgroundLLM, max_waiting_requests=48, max_num_seqs=32)
    threads, per_thread = 8, 250
    report: dict[int, tuple] = {}
    all_ids: list[str] = []
    ids_lock = threading.Lock()

    def make_worker(t):
        rng = random.Random(t)
        state = {"mine": set(), "finals": {}, "foreign": [], "after_final": [], "aborted": 0}

        def account(out):
            rid = out.request_id
            if rid not in state["mine"]:
                state["foreign"].append(rid)
                return
            if rid in state["finals"]:
                state["after_final"].append(rid)
            if out.finished:
                state["finals"][rid] = state["finals"].get(rid, 0) + 1
                assert all(c.finish_reason in ("length", "abort") for c in out.outputs)
                state["aborted"] += out.outputs[0].finish_reason == "abort"

        def run():
            for i in range(per_thread):
                params = SamplingParams(max_tokens=rng.randint(1, 6), temperature=rng.choice([0.0, 1.0]),
                                        ignore_eos=True, seed=rng.randrange(1 << 30))
                rid = engine.submit([rng.randrange(3, 49152) for _ in range(rng.randint(2, 12))], params,
                                    stream=rng.random() < 0.3, block=True, timeout=60)
                state["mine"].add(rid)
                with ids_lock:
                    all_ids.append(rid)
                    victim = rng.choice(all_ids[-32:]) if rng.random() < 0.15 else None
                if victim is not None:
                    engine.abort(victim)  # often another thread's request: it still ends in that one's inbox
                if i % 7 == 0:
                    for out in engine.poll():
                        account(out)
            deadline = time.monotonic() + 120
            while len(state["finals"]) < len(state["mine"]) and time.monotonic() < deadline:
                for out in engine.poll(timeout=0.5):
                    account(out)
            report[t] = state

        return run

    workers = [threading.Thread(target=make_worker(t)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert len(report) == threads
    total = 0
    assert sum(state["aborted"] for state in report.values()) > 20  # the aborts really cut requests short
    for state in report.values():
        assert not state["foreign"] and not state["after_final"]
        assert set(state["finals"]) == state["mine"] and set(state["finals"].values()) == {1}
        total += len(state["mine"])
    assert total == threads * per_thread == len(set(all_ids))
    assert engine.num_unfinished == 0
    wait_kv_free(engine)


def test_shutdown_ends_pending_requests_and_refuses_new_ones(make_engine):
    with make_engine(BackgroundLLM) as engine:
        rids = [engine.submit(p, LONG) for p in prompts(3, seed=4)]
    outs = engine.poll()
    assert sorted(o.request_id for o in outs) == sorted(rids)
    assert all(o.finished and o.outputs[0].finish_reason == "abort" for o in outs)
    with pytest.raises(EngineDeadError):
        engine.submit(prompts(1)[0], GREEDY)


def test_the_example_env_loop_keeps_its_rate_with_requests_in_flight(make_engine):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "sim_env_rollouts.py"
    spec = importlib.util.spec_from_file_location("sim_env_rollouts", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    engine = make_engine(BackgroundLLM)
    params = SamplingParams(max_tokens=4, temperature=0.7, seed=0)
    busy = example.run_phase(engine, example.CartSim(), rate=50, seconds=1.0, in_flight=4, params=params)
    assert busy["steps_per_s"] > 25 and busy["finished"] > 0 and busy["tok_per_s"] > 0
    for out in engine.poll(timeout=5):  # the aborted leftovers still arrive, once each
        assert out.finished
    wait_kv_free(engine)


def test_abort_one_sample_of_n(make_engine):
    engine = make_engine(BackgroundLLM)
    params = SamplingParams(n=2, max_tokens=200, temperature=1.0, seed=2, ignore_eos=True)
    rid = engine.submit(prompts(1, seed=2)[0], params, stream=True)
    assert engine.poll(timeout=30)
    with pytest.raises(ValueError, match=r"sample_index must be an integer in \[0, 2\)"):
        engine.abort(rid, 2)
    engine.abort(rid, 0)
    out = engine.result(rid, timeout=60)
    assert [c.finish_reason for c in out.outputs] == ["abort", "length"]
    assert len(out.outputs[1].token_ids) == 200
    wait_kv_free(engine)
