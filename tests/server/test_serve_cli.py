"""`plait serve` as a real process on the default model: answers the openai client, shuts down gracefully.

One process for the whole file (loading the model takes seconds); SIGTERM arrives while a stream is in flight,
the stream still ends properly and the process exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_process():
    port = free_port()
    env = dict(os.environ, PLAIT_API_KEY="k3y")
    proc = subprocess.Popen([sys.executable, "-m", "plait.cli", "serve", "--port", str(port), "--max-num-seqs", "8",
                             "--served-model-name", "smol"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "plait serve did not come up"
        time.sleep(0.2)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serve_answers_then_shuts_down_gracefully(serve_process):
    proc, url = serve_process
    client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smol"]
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 8
    assert httpx.get(url + "/v1/models").status_code == 401  # PLAIT_API_KEY is honoured

    stream = client.completions.create(model="smol", prompt="Count: one, two,", max_tokens=48, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = [next(iter(stream))]
    proc.send_signal(signal.SIGTERM)  # mid-stream: the in-flight request is allowed to finish
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert proc.wait(timeout=60) == 0
    log = proc.stdout.read()
    assert "Shutting down" in log and "Traceback" not in log
