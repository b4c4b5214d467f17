"""`plait serve --data-parallel-size 2`'s engine: a RayRouter over two tiny replicas, driven over real HTTP.

Greedy outputs equal one engine's; a repeated prefix goes back to the replica that cached it; streams,
aborts on disconnect, 400 / 503 answers, /health and /metrics work as with one engine; a replica that dies
ends its in-flight requests with an error and the other keeps serving. The tests share one router (starting
replicas costs seconds) and the replica-death test runs last.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from plait.engine.async_llm import AsyncLLM
from plait.params import SamplingParams
from plait.server import build_app
from tests.distributed.tiny_engine import TINY_SETTINGS, build_tiny

pytestmark = pytest.mark.ray
MODEL = "tiny"


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, engine) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(engine, MODEL), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def router(ray_cluster):
    from plait.distributed.router import RayRouter

    r = RayRouter(data_parallel_size=2, max_waiting_requests=64, health_interval=0.2, _engine_factory=build_tiny,
                  **TINY_SETTINGS)
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def server(router):
    srv = Server(router)
    yield srv
    srv.stop()


def wait_idle(router, timeout: float = 20.0) -> None:
    """No request pending on the router and every KV block of every live replica free again."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        live = [a for a, s in zip(router.replicas, router.states) if s.alive]
        if router.num_pending == 0 and all(ray.get([a.all_blocks_free.remote() for a in live])):
            return
        assert time.monotonic() < deadline, "replicas did not return to idle"
        time.sleep(0.05)


def test_streams_match_one_engine_and_prefixes_go_home(server, router, make_engine):
    prompts = [f"Request number {i} says" for i in range(8)]
    want = [o.outputs[0].text for o in make_engine(num_threads=1).generate(
        prompts, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True), use_tqdm=False)]

    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"prompt": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": True, "stream": True}
        text = ""
        async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
        return text

    async def main() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(main()) == want
    assert min(router.policy.routed) >= 3  # both replicas served (least loaded spreads the burst)
    # a long shared prefix: the second request goes where the first one's blocks are cached
    long = "The quick brown fox jumps over the lazy dog. " * 12
    before = router.policy.prefix_routed
    for suffix in (" First", " Second"):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": long + suffix, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
    assert router.policy.prefix_routed == before + 1
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    wait_idle(router)


def test_health_metrics_and_errors(server, router):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["healthy"] == 2
    router.refresh()
    text = httpx.get(server.url + "/metrics").text
    assert 'plait:replica_healthy{replica="0"} 1.0' in text and 'plait:replica_healthy{replica="1"} 1.0' in text
    assert "plait:generation_tokens_total" in text
    r = httpx.post(server.url + "/v1/completions", json={"prompt": [5] * 600, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(server.url + "/detokenize", json={"tokens": [1, 2, 3]})
    assert r.status_code == 200


def test_disconnect_aborts_and_overload_is_503(server, router):
    aborted = 'plait:request_success_total{finished_reason="abort",model_name="tiny"}'

    def count() -> float:
        line = next((x for x in httpx.get(server.url + "/metrics").text.splitlines() if x.startswith(aborted)), None)
        return 0.0 if line is None else float(line.split()[-1])

    before = count()
    body = {"prompt": "Tell me a long story", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    wait_idle(router)  # the dropped stream was aborted on its replica; its blocks are back in the pool
    assert count() == before + 1
    # the router's pending limit is the server's back-pressure (0 makes any request one too many, without
    # racing a stream's end on this fast tiny model)
    limit, router.max_waiting_requests = router.max_waiting_requests, 0
    try:
        over = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    finally:
        router.max_waiting_requests = limit
    assert over.status_code == 503 and over.headers["retry-after"] == "1"


def test_python_surface(router):
    async def main() -> None:
        with pytest.raises(ValueError, match="output_kind"):
            router.generate("x", output_kind="everything")
        with pytest.raises(ValueError, match="context length"):
            router.generate([5] * 600)  # refused at submission, like AsyncLLM, before any replica sees it
        outs = [o async for o in router.generate("Hello", SamplingParams(max_tokens=4, temperature=0),
                                                 output_kind="final")]
        assert len(outs) == 1 and outs[0].finished and outs[0].prompt == "Hello"
        assert len(outs[0].outputs[0].token_ids) <= 4
        router.generate("Never read", SamplingParams(max_tokens=4))  # a stream nobody iterates ...

    asyncio.run(main())
    wait_idle(router)  # ... is released when its replica task ends


def test_abort_one_sample_through_the_router(router):
    async def main() -> list:
        params = SamplingParams(n=2, max_tokens=200, temperature=1.0, seed=1, ignore_eos=True)
        final, aborted = None, False
        async for out in router.generate("Hello", params, request_id="fan2", output_kind="cumulative"):
            final = out
            if not aborted and out.outputs[0].token_ids:
                with pytest.raises(ValueError, match="sample_index"):
                    router.abort_nowait("fan2", 2)
                await router.abort("fan2", 0)
                aborted = True
        return [c.finish_reason for c in final.outputs]

    assert asyncio.run(main()) == ["abort", "length"]
    wait_idle(router)


def test_score_equals_one_engine(router, make_engine):
    """The router scores like a local engine (EngineClient.score); bad input is a ValueError at once."""
    one = make_engine(AsyncLLM, num_threads=1)
    prompt, continuations = "Once upon a time there", [" was a", " were three bears", " lived"]

    async def run(engine):
        return [await engine.score(prompt, c) for c in continuations]

    want, got = asyncio.run(run(one)), asyncio.run(run(router))
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    with pytest.raises(ValueError, match="continuation"):
        asyncio.run(router.score(prompt, ""))
    wait_idle(router)


def test_dead_replica_fails_its_requests_and_the_other_serves(server, router):
    import ray

    body = {"prompt": "Tell me a long story", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        (index,) = [entry.index for entry in router._pending.values()]
        ray.kill(router.replicas[index])
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][6:])["error"]
    assert error["code"] == "engine_dead" and f"replica {index} died" in error["message"]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["healthy"] == 1
    assert health.json()["replicas"][index]["alive"] is False
    for _ in range(3):  # everything goes to the survivor now
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200
    wait_idle(router)
    ray.kill(router.replicas[1 - index])
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").status_code != 503:  # the monitor notices within a few pings
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
