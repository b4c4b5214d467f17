"""PDRouter: the split over a prefill and a decode Ray actor (1 CPU each), KV through the object store or TCP.

Greedy streams equal one engine's at prompt lengths around the block size; the bytes moved follow the
payload's formula on both sides; both pools are free and no transfer is held after every request; aborting a
request (mid-decode, or while its KV is in transit) leaks nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from plait.params import SamplingParams
from tests.distributed.tiny_engine import TINY_SETTINGS, build_tiny
from tests.helpers import tiny_config

pytestmark = pytest.mark.ray
BLOCK = 16


@pytest.fixture(scope="module", params=["ray", "tcp"])
def router(request, ray_cluster):
    from plait.distributed.pd.router import PDRouter

    r = PDRouter(connector=request.param, _engine_factory=build_tiny, **TINY_SETTINGS)
    yield r
    r.shutdown()


def wait_idle(router, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (router.num_pending == 0 and router.idle()):
        assert time.monotonic() < deadline, "KV blocks or transfers left behind"
        time.sleep(0.05)


async def tokens(router, prompt, params):
    return [t async for o in router.generate(prompt, params) for t in o.outputs[0].token_ids]


def test_streams_equal_one_engine_and_bytes_follow_the_formula(router, make_engine):
    one = make_engine(num_threads=1)
    cfg = tiny_config("llama", tie_word_embeddings=False)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    lengths = [3, BLOCK, BLOCK + 1, 3 * BLOCK + 9]
    prompts = [[(13 * i + j) % 450 + 30 for i in range(n)] for j, n in enumerate(lengths)]
    want = [o.outputs[0].token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    before = router.bytes_moved()

    async def run():
        return await asyncio.gather(*(tokens(router, p, params) for p in prompts))

    assert asyncio.run(run()) == want
    moved = sum(BLOCK * ((n - 1) // BLOCK) for n in lengths)
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    sent, received = router.bytes_moved()
    assert (sent - before[0], received - before[1]) == (moved * per_token, moved * per_token)
    wait_idle(router)


def test_abort_mid_decode_and_in_transit(router):
    async def run():
        params = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
        stream = router.generate(list(range(40, 120)), params, output_kind="cumulative")
        async for out in stream:
            if len(out.outputs[0].token_ids) >= 3:
                break
        await stream.aclose()
        stream = router.generate(list(range(50, 130)), params, request_id="gone")
        first = await stream.__anext__()
        router.abort_nowait("gone")
        rest = [o async for o in stream]
        assert (first.outputs[0].token_ids and rest[-1].finished
                and rest[-1].outputs[0].finish_reason == "abort")

    asyncio.run(run())
    wait_idle(router)


def test_bad_settings_fail_before_any_actor_starts(ray_cluster):
    from plait.distributed.pd.router import PDRouter

    with pytest.raises(ValueError, match="connector"):
        PDRouter(connector="carrier-pigeon", _engine_factory=build_tiny, **TINY_SETTINGS)
    with pytest.raises(ValueError, match="block_size"):
        PDRouter(_engine_factory=build_tiny, block_size=0, **TINY_SETTINGS)


def test_served_over_http(router, make_engine):
    """`plait serve --pd-split`'s engine behind the OpenAI server: streamed text equals one engine's; bad input
    is a 400 before any worker is involved; /metrics sums both workers."""
    import httpx

    from tests.distributed.test_router import Server

    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    want = make_engine(num_threads=1).generate([prompt], SamplingParams(max_tokens=8, temperature=0,
                                                                         ignore_eos=True), use_tqdm=False)
    server = Server(router)
    try:
        body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True}
        text = ""
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    import json

                    text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
        assert text == want[0].outputs[0].text
        r = httpx.post(server.url + "/v1/completions", json={"prompt": [5] * 600, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "plait:generation_tokens_total" in httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    wait_idle(router)
