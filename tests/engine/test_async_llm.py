"""AsyncLLM: streaming, many concurrent callers, aborts by break / cancel / abort(), engine failure."""

import asyncio

import pytest

from plait import SamplingParams
from plait.engine.async_llm import AsyncLLM, EngineDeadError, QueueFullError
from tests.engine.test_llm import prompts

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def wait_idle(engine, timeout=10.0):
    async def idle():
        for _ in range(int(timeout / 0.01)):
            if engine.num_pending == 0 and not engine.engine.has_unfinished():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"engine not idle after {timeout} s: {engine.stats()}")
    return idle()


def test_deltas_add_up_and_match_offline(make_engine):
    from plait.engine.llm import LLM

    offline = make_engine(LLM)
    batch = prompts(6, seed=11)
    expected = offline.generate(batch, GREEDY, use_tqdm=False)
    engine = make_engine(AsyncLLM)

    async def collect(p):
        text, ids, last = "", [], None
        async for out in engine.generate(p, GREEDY):
            text += out.outputs[0].text
            ids += out.outputs[0].token_ids
            last = out
        assert last.finished and last.outputs[0].finish_reason == "length"
        return text, ids

    async def main():
        return await asyncio.gather(*(collect(p) for p in batch))

    results = asyncio.run(main())
    assert [r[1] for r in results] == [o.outputs[0].token_ids for o in expected]
    assert [r[0] for r in results] == [o.outputs[0].text for o in expected]
    assert engine.engine.scheduler.kv.all_blocks_free()


def test_cumulative_and_final_kinds(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        outs = [o async for o in engine.generate(prompts(1)[0], GREEDY, output_kind="cumulative")]
        finals = [o async for o in engine.generate(prompts(1)[0], GREEDY, output_kind="final")]
        return outs, finals

    outs, finals = asyncio.run(main())
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    assert lengths == sorted(lengths) and lengths[-1] == 16
    assert len(finals) == 1 and finals[0].outputs[0].token_ids == outs[-1].outputs[0].token_ids


def test_break_cancel_and_abort_free_kv(make_engine):
    engine = make_engine(AsyncLLM)
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)

    async def breaker(p):
        async for out in engine.generate(p, long):
            break

    async def main():
        # 8 streams dropped after their first token, 4 tasks cancelled, 4 aborted by id, 4 completing normally.
        await asyncio.gather(*(breaker(p) for p in prompts(8, seed=1)))
        tasks = [asyncio.create_task(breaker(p)) for p in prompts(4, seed=2)]
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        async def aborted(i, p):
            outs = []
            async for out in engine.generate(p, long, request_id=f"ab{i}"):
                outs.append(out)
                await engine.abort(f"ab{i}")
            return outs[-1]

        ends = await asyncio.gather(*(aborted(i, p) for i, p in enumerate(prompts(4, seed=3))))
        assert all(o.outputs[0].finish_reason == "abort" for o in ends)
        async def last(p):
            return [o async for o in engine.generate(p, GREEDY)][-1]

        fine = await asyncio.gather(*(last(p) for p in prompts(4, seed=4)))
        assert all(o.finished for o in fine)
        await wait_idle(engine)

    asyncio.run(main())
    assert engine.engine.scheduler.kv.all_blocks_free()
    assert engine.stats().running == 0 and engine.stats().waiting == 0


def test_bad_input_raises_at_once_and_others_continue(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        with pytest.raises(ValueError, match="empty"):
            async for _ in engine.generate("", GREEDY):
                pass
        with pytest.raises(ValueError, match="context length"):
            async for _ in engine.generate([5] * 600, GREEDY):
                pass
        return [o async for o in engine.generate(prompts(1)[0], GREEDY)][-1]

    assert asyncio.run(main()).finished


def test_queue_full_is_refused(make_engine):
    engine = make_engine(AsyncLLM, max_waiting_requests=2)

    async def main():
        long = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
        engine.submit(prompts(1)[0], long)
        engine.submit(prompts(1, seed=1)[0], long)
        with pytest.raises(QueueFullError):
            engine.submit(prompts(1, seed=2)[0], long)

    asyncio.run(main())


def test_engine_failure_reaches_callers(make_engine):
    engine = make_engine(AsyncLLM)

    def broken(sched):
        raise RuntimeError("simulated device failure")

    engine.engine.runner.execute = broken

    async def main():
        with pytest.raises(EngineDeadError, match="simulated"):
            async for _ in engine.generate(prompts(1)[0], GREEDY):
                pass

    asyncio.run(main())
    assert not engine.is_running


def test_caller_leaving_with_a_closed_loop_does_not_kill_the_engine(make_engine):
    """asyncio.run closes the caller's loop right after it breaks out; late outputs must not kill the engine."""
    engine = make_engine(AsyncLLM)
    long = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)

    async def take_one(p):
        async for _ in engine.generate(p, long):
            break

    for p in prompts(5, seed=21):
        asyncio.run(take_one(p))
    assert engine.is_running

    async def full():
        return [o async for o in engine.generate(prompts(1)[0], GREEDY)][-1]

    assert asyncio.run(full()).finished
    for _ in range(500):
        if engine.engine.scheduler.kv.all_blocks_free():
            break
        import time
        time.sleep(0.01)
    assert engine.engine.scheduler.kv.all_blocks_free()


def test_shutdown_fails_pending_and_later_requests(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        gen = engine.generate(prompts(1)[0], SamplingParams(max_tokens=300, ignore_eos=True))
        engine.shutdown()
        with pytest.raises(EngineDeadError):
            async for _ in gen:
                pass
        with pytest.raises(EngineDeadError):
            engine.generate(prompts(1)[0], GREEDY)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_engine_is_built_in_the_engine_thread_and_build_errors_reach_the_caller(monkeypatch, tmp_path):
    """AsyncLLM builds inside its engine thread (one OpenMP pool: see AsyncLLM.__init__), yet a model that cannot
    load still raises in the constructor, in the caller's thread."""
    import threading

    import plait.engine.async_llm as async_llm

    with pytest.raises(ValueError, match="not found|does not exist|no model"):
        AsyncLLM(model=str(tmp_path / "missing.gguf"))

    built_in = []

    def recording_build(config):
        built_in.append(threading.current_thread().name)
        raise RuntimeError("boom")

    monkeypatch.setattr(async_llm, "build_engine", recording_build)
    with pytest.raises(RuntimeError, match="boom"):
        AsyncLLM()
    assert built_in == ["plait-engine"]


def test_abort_of_an_n_request_ends_every_sample(make_engine):
    engine = make_engine(AsyncLLM)

    async def main():
        params = SamplingParams(n=3, max_tokens=300, temperature=1.0, ignore_eos=True)
        outs = []
        async for out in engine.generate(prompts(1)[0], params, request_id="fan"):
            outs.append(out)
            if len(outs) == 2:
                await engine.abort("fan")
        await wait_idle(engine)
        return outs[-1]

    last = asyncio.run(main())
    assert last.finished and [c.finish_reason for c in last.outputs] == ["abort"] * 3
    assert engine.engine.scheduler.kv.all_blocks_free()


def test_concurrent_submits_from_threads_with_one_id(make_engine):
    """Threads racing to submit the same request id: exactly one wins, the others get ValueError, nobody hangs."""
    import threading

    engine = make_engine(AsyncLLM)
    barrier = threading.Barrier(8)
    results = []

    def caller():
        async def run():
            barrier.wait()
            try:
                outs = [o async for o in engine.generate(prompts(1)[0], SamplingParams(
                    max_tokens=200, temperature=0, ignore_eos=True), request_id="same")]
                results.append(("ok", sum(len(o.outputs[0].token_ids) for o in outs)))
            except ValueError as exc:
                results.append(("refused", str(exc)))
        asyncio.run(asyncio.wait_for(run(), 60))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a caller hangs"
    assert sorted(r[0] for r in results) == ["ok"] + ["refused"] * 7
    assert ("ok", 200) in results


def test_many_threads_each_get_their_own_outputs(make_engine):
    import threading

    from plait.engine.llm import LLM

    batch = prompts(24, seed=40)
    expected = [o.outputs[0].token_ids for o in make_engine(LLM).generate(batch, GREEDY, use_tqdm=False)]
    engine = make_engine(AsyncLLM)
    got = {}

    def caller(k):
        async def run():
            for i in range(k, len(batch), 6):
                ids = []
                async for out in engine.generate(batch[i], GREEDY, request_id=f"t{i}"):
                    ids += out.outputs[0].token_ids
                got[i] = ids
        asyncio.run(run())

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(batch))] == expected
    assert engine.engine.scheduler.kv.all_blocks_free()


def test_abort_one_sample_keeps_its_siblings(make_engine):
    """AsyncLLM.abort(request_id, sample_index): that sample ends 'abort', the seeded siblings finish exactly as in
    a run without the abort, and an index outside [0, n) raises at once."""
    engine = make_engine(AsyncLLM)
    params = SamplingParams(n=3, max_tokens=24, temperature=1.0, seed=3, ignore_eos=True)
    prompt = prompts(1, seed=4)[0]

    async def main(abort):
        final = None
        async for out in engine.generate(prompt, params, request_id="fan", output_kind="cumulative"):
            final = out
            if abort and len(out.outputs[1].token_ids) >= 2 and out.outputs[1].finish_reason is None:
                with pytest.raises(ValueError, match="sample_index"):
                    await engine.abort("fan", 3)
                await engine.abort("fan", 1)
                abort = False
        await wait_idle(engine)
        return final

    full = asyncio.run(main(False))
    cut = asyncio.run(main(True))
    assert [c.finish_reason for c in cut.outputs] == ["length", "abort", "length"]
    assert cut.outputs[0].token_ids == full.outputs[0].token_ids
    assert cut.outputs[2].token_ids == full.outputs[2].token_ids
    assert len(cut.outputs[1].token_ids) < 24
    assert engine.engine.scheduler.kv.all_blocks_free()


def test_tokens_generated_before_an_engine_failure_reach_a_delta_reader_first(make_engine):
    """The engine's last outputs and its failure can both arrive between two reads: the reader gets the tokens,
    then the error (before, the error alone: generated tokens were lost)."""
    from plait.core.engine_output import EngineOutput, SampleDelta
    from plait.engine.async_llm import _Stream
    from plait.engine.output_processor import RequestState

    engine = make_engine(cls=AsyncLLM)

    async def read(kind: str):
        state = RequestState("r", None, [5, 6], SamplingParams(max_tokens=8), engine.tokenizer)
        stream = _Stream(asyncio.get_running_loop(), state)
        state.process(EngineOutput("r", [SampleDelta(0, [11, 12])], finished=False))
        AsyncLLM._on_error(stream, EngineDeadError("simulated"))
        got = []
        with pytest.raises(EngineDeadError):
            async for out in engine.stream_outputs("r", stream, output_kind=kind):
                got.append(out.outputs[0].token_ids)
        return got

    assert asyncio.run(read("delta")) == [[11, 12]]
    assert asyncio.run(read("final")) == []  # a final reader gets no partial output, only the error
