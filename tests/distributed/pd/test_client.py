"""The prefill/decode split over two in-process engines: outputs equal one engine's, the bytes moved follow the
payload's formula, every KV block comes back on both sides, and aborts drop the transfer on both sides."""

from __future__ import annotations

import asyncio
import time

import pytest

from plait.distributed.kv_transfer.connector import InProcessConnector
from plait.distributed.pd.client import PDClient
from plait.engine.async_llm import AsyncLLM
from plait.params import SamplingParams
from tests.helpers import tiny_config

BLOCK = 16


@pytest.fixture
def split(make_engine):
    def make(**kw):
        conn = kw.pop("connector", None) or InProcessConnector()
        prefill = make_engine(AsyncLLM, num_threads=1, **kw)
        decode = make_engine(AsyncLLM, num_threads=1, **kw)
        return PDClient(prefill, decode, conn)
    return make


async def collect(client, prompt, params, kind="delta"):
    outs = [o async for o in client.generate(prompt, params, output_kind=kind)]
    return outs


def joined(outs):
    return [t for o in outs for t in o.outputs[0].token_ids]


def wait_free(client, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (client.prefill_worker.all_blocks_free() and client.decode_worker.all_blocks_free()
               and client.prefill_worker.pending_transfers() == 0 and client.decode_worker.pending_transfers() == 0):
        assert time.monotonic() < deadline, "KV blocks or transfers left behind"
        time.sleep(0.02)


def kv_bytes(num_tokens):
    cfg = tiny_config("llama", tie_word_embeddings=False)
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * num_tokens * 4  # fp32


@pytest.mark.parametrize("length", [1, 5, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7])
def test_greedy_stream_equals_one_engine(split, make_engine, length):
    one = make_engine(num_threads=1)
    client = split()
    prompt = [(7 * i + 3) % 500 + 10 for i in range(length)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    want = one.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids

    outs = asyncio.run(collect(client, prompt, params))
    assert joined(outs) == want
    assert outs[0].outputs[0].token_ids == want[:1]  # the first delta is the prefill worker's token alone
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
    moved = BLOCK * ((length - 1) // BLOCK)
    stats = client.pd_stats
    assert (stats.transfers, stats.transferred_tokens, stats.imported_tokens) == (1, moved, moved)
    assert stats.transferred_bytes == kv_bytes(moved) == client.prefill_worker.connector.bytes_sent
    assert stats.first_token_mismatches == 0
    wait_free(client)
    client.shutdown()


def test_text_logprobs_and_n(split, make_engine):
    one = make_engine(num_threads=1)
    client = split()
    prompt = "The quick brown fox jumps over the lazy dog and keeps on running through the field"
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)
    want = one.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    got = asyncio.run(collect(client, prompt, params, "final"))[-1].outputs[0]
    assert (got.text, got.token_ids) == (want.text, want.token_ids)
    assert [sorted(d) for d in got.logprobs] == [sorted(d) for d in want.logprobs]
    assert got.cumulative_logprob == pytest.approx(want.cumulative_logprob, abs=1e-4)

    seeded = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=5, ignore_eos=True)
    want_n = [o.token_ids for o in one.generate([prompt], seeded, use_tqdm=False)[0].outputs]
    got_n = asyncio.run(collect(client, prompt, seeded, "final"))[-1]
    assert [o.token_ids for o in got_n.outputs] == want_n
    wait_free(client)
    client.shutdown()


def test_one_token_request_never_transfers(split):
    client = split()
    outs = asyncio.run(collect(client, list(range(10, 60)), SamplingParams(max_tokens=1, temperature=0)))
    assert outs[-1].finished and len(joined(outs)) == 1
    assert client.pd_stats.transfers == 0
    wait_free(client)
    client.shutdown()


def test_abort_mid_decode_and_before_decode_leaks_nothing(split):
    client = split()

    async def run():
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        # Leave after the first decode tokens: the decode request is aborted and its import unpinned.
        stream = client.generate(list(range(20, 80)), params, output_kind="cumulative")
        async for out in stream:
            if len(out.outputs[0].token_ids) >= 4:
                break
        await stream.aclose()
        assert client.pd_stats.transfers == 1
        # Abort while the prefill runs: the KV in transit is dropped on both sides.
        stream = client.generate(list(range(30, 130)), params, request_id="gone")
        client.abort_nowait("gone")
        outs = [o async for o in stream]
        assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"

    asyncio.run(run())
    wait_free(client)
    assert client.num_pending == 0
    client.shutdown()


class SlowConnector(InProcessConnector):
    """Sends arrive late: an abort finds the decode worker waiting for them."""

    def send(self, key, payload):
        time.sleep(0.3)
        super().send(key, payload)


def test_abort_while_kv_in_transit(split):
    client = split(connector=SlowConnector())

    async def run():
        stream = client.generate(list(range(40, 100)), SamplingParams(max_tokens=50, temperature=0))
        first = await stream.__anext__()
        assert len(first.outputs[0].token_ids) == 1
        await asyncio.sleep(0.05)  # the prefill worker is sending, the decode worker not started
        client.abort_nowait(first.request_id)
        rest = [o async for o in stream]
        assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"

    asyncio.run(run())
    time.sleep(0.4)  # the late send lands on a dropped key and is discarded
    wait_free(client)
    assert client.prefill_worker.connector.bytes_sent == 0
    client.shutdown()


def test_first_token_disagreement_continues_from_the_prefill_token(split, make_engine):
    """Engines that are not batch-invariant may round the last prompt token's logits apart; the stream then
    follows the prefill worker's token (forced here)."""
    one = make_engine(num_threads=1)
    client = split()
    original = client.prefill_worker.prefill

    async def forged(key, token_ids, params, send=True):
        async for item in original(key, token_ids, params, send):
            if hasattr(item, "outputs"):
                item.outputs[0].token_ids = [(item.outputs[0].token_ids[0] + 1) % 500]
            yield item

    client.prefill_worker.prefill = forged
    prompt = list(range(50, 90))
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = asyncio.run(collect(client, prompt, params))
    first = joined(outs)[0]
    rest = one.generate([prompt + [first]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0].token_ids
    assert joined(outs) == [first] + rest
    assert client.pd_stats.first_token_mismatches == 1
    wait_free(client)
    client.shutdown()


def test_bad_input_and_mismatched_engines(split, make_engine):
    client = split()
    with pytest.raises(ValueError, match="prompt"):
        client.generate([], SamplingParams())
    with pytest.raises(ValueError, match="sample_index"):
        client.generate([1, 2, 3], SamplingParams(max_tokens=50), request_id="x")
        client.abort_nowait("x", 0)
    client.shutdown()

    other = PDClient(make_engine(AsyncLLM, num_threads=1), make_engine(AsyncLLM, num_threads=1, block_size=8))
    with pytest.raises(ValueError, match="block_size"):
        asyncio.run(collect(other, list(range(10, 50)), SamplingParams(max_tokens=4, temperature=0)))
    wait_free(other)
    assert other.num_pending == 0
    other.shutdown()


def test_over_tcp_between_two_connectors(make_engine):
    """The same split with the KV crossing a loopback socket (the two-process connector)."""
    from plait.distributed.kv_transfer.tcp_connector import TcpConnector

    one = make_engine(num_threads=1)
    receiver = TcpConnector.listen()
    sender = TcpConnector.connect(receiver.address)
    client = PDClient(make_engine(AsyncLLM, num_threads=1), make_engine(AsyncLLM, num_threads=1), sender,
                      decode_connector=receiver)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    for length in (BLOCK, 2 * BLOCK + 5):
        prompt = [(11 * i + 5) % 400 + 20 for i in range(length)]
        want = one.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        assert joined(asyncio.run(collect(client, prompt, params))) == want
    moved = BLOCK * ((BLOCK - 1) // BLOCK) + BLOCK * ((2 * BLOCK + 4) // BLOCK)
    assert sender.bytes_sent == receiver.bytes_received == kv_bytes(moved)
    wait_free(client)
    client.shutdown()
    sender.close()
    receiver.close()


def test_score_through_the_split(split, make_engine):
    one = make_engine(AsyncLLM, num_threads=1)
    client = split()
    prompt = "A long prompt about the weather in the mountains, where it rains a lot in spring"

    async def run(engine):
        return [await engine.score(prompt, c) for c in (" and snow", " every day of the week")]

    for w, g in zip(asyncio.run(run(one)), asyncio.run(run(client))):
        assert g.token_ids == w.token_ids and g.logprob == pytest.approx(w.logprob, abs=1e-4)
    wait_free(client)
    client.shutdown()
