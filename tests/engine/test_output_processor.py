"""The frontend output processor: incremental text, stop strings held back only as far as they match, streamed
deltas that never show a stop string, and a reader that stops reading costing O(its output) memory."""

import asyncio
import tracemalloc

from plait import SamplingParams
from plait.config import EngineConfig
from plait.engine.async_llm import AsyncLLM
from plait.engine.builder import build_engine
from plait.engine.detokenizer import IncrementalDetokenizer
from tests.engine.test_llm import prompts
from tests.helpers import random_weights, tiny_config


class CharTokenizer:
    """Token id i decodes to chr(i): one character per token, so tests can spell text exactly."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def feed(detok, text):
    released, stop = [], None
    for ch in text:
        stop = detok.add(ord(ch))
        released.append(detok.take())
        if stop is not None:
            break
    return released, stop


def test_long_unmatched_stop_string_does_not_hold_back_streaming():
    detok = IncrementalDetokenizer(CharTokenizer(), [], ["Z" * 1000])
    released, stop = feed(detok, "hello world")
    assert stop is None and released == list("hello world")  # every character released at once


def test_only_the_matching_part_is_held_back_and_the_stop_never_streams():
    detok = IncrementalDetokenizer(CharTokenizer(), [], ["abcd", "xyz"])
    released, stop = feed(detok, "1ab2abcxy3abcd4")
    assert stop == "abcd"
    streamed = "".join(released)
    assert streamed == "1ab2abcxy3"
    assert detok.text == streamed
    assert "abcd" not in "".join(released)


def test_include_stop_str_and_a_stop_spanning_tokens():
    detok = IncrementalDetokenizer(CharTokenizer(), [], ["cd"], include_stop=True)
    released, stop = feed(detok, "abcdef")
    assert stop == "cd" and "".join(released) == "abcd"


def test_streamed_deltas_never_contain_the_stop_string(make_engine):
    from plait.engine.llm import LLM

    p = prompts(1, seed=8)[0]
    free = make_engine(LLM).generate([p], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True),
                                     use_tqdm=False)[0].outputs[0].text
    stop = free[8:12]
    engine = make_engine(AsyncLLM)

    async def main():
        return [o.outputs[0] async for o in engine.generate(p, SamplingParams(
            max_tokens=24, temperature=0, ignore_eos=True, stop=[stop]))]

    deltas = asyncio.run(main())
    streamed = "".join(d.text for d in deltas)
    assert streamed == free[: free.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    assert not any(stop in d.text for d in deltas)


def test_a_reader_that_never_reads_costs_o_of_its_output(tokenizer):
    """2,000 steps of a never-read stream, while another stream is read to the end: Python memory grows by
    about the output itself (the old engine kept a full copy of the output per step: ~30 MB here)."""
    cfg = tiny_config("llama", tie_word_embeddings=False, max_position=4096)
    built = build_engine(EngineConfig(dtype="float32", kv_cache_memory=4 << 20), cfg, random_weights(cfg), tokenizer)
    engine = AsyncLLM(_prebuilt=built, dtype="float32", kv_cache_memory=4 << 20)
    long = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True, logprobs=1)
    try:
        async def main():
            stalled = engine.generate(prompts(1)[0], long, request_id="stalled")  # submitted, never read
            tracemalloc.start()
            start = tracemalloc.get_traced_memory()[0]
            reader = [o async for o in engine.generate(prompts(1, seed=1)[0], SamplingParams(
                max_tokens=50, temperature=0, ignore_eos=True))]
            assert reader[-1].finished  # the other stream ran to the end meanwhile
            while engine.engine.has_unfinished():
                await asyncio.sleep(0.05)
            grown = tracemalloc.get_traced_memory()[0] - start
            tracemalloc.stop()
            outs = [o async for o in stalled]
            return grown, outs

        grown, outs = asyncio.run(main())
        assert sum(len(o.outputs[0].token_ids) for o in outs) == 2000
        assert len(outs) == 1  # everything came as one delta: nothing queued per step
        assert grown < 3 << 20, f"{grown / 2**20:.1f} MiB for one unread 2,000-token stream"
    finally:
        engine.shutdown()
