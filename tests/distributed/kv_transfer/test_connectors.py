"""The connector contract, for the in-process and the TCP connector (the Ray one: tests/distributed/pd)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from plait.distributed.kv_transfer.connector import InProcessConnector, TransferDropped
from plait.distributed.kv_transfer.payload import KVPayload
from plait.distributed.kv_transfer.tcp_connector import TcpConnector


def payload(layers=3, tokens=32, heads=2, dim=8, seed=0) -> KVPayload:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((2, heads, tokens, dim)).astype(np.float32).view(np.uint8).reshape(-1)
              for _ in range(layers)]
    return KVPayload(list(range(tokens + 3)), tokens, 16, "float32", heads, dim, arrays, first_token=7)


def pair(kind):
    if kind == "inprocess":
        conn = InProcessConnector()
        return conn, conn
    receiver = TcpConnector.listen()
    return TcpConnector.connect(receiver.address), receiver


@pytest.mark.parametrize("kind", ["inprocess", "tcp"])
def test_send_receive_drop(kind):
    sender, receiver = pair(kind)
    sent = payload()
    sender.send("a", sent)
    got = receiver.receive("a", timeout=5)
    assert got.header() == sent.header()
    assert all(np.array_equal(x, y) for x, y in zip(got.layers, sent.layers))
    assert sender.bytes_sent == receiver.bytes_received == 3 * 2 * 2 * 32 * 8 * 4 == sent.nbytes
    assert receiver.pending() == 0

    with pytest.raises(TimeoutError):
        receiver.receive("b", timeout=0.05)
    with pytest.raises(ValueError, match="timeout"):
        receiver.receive("b", timeout=0)

    # A receive waiting for a key ends as soon as the key is dropped.
    errors = []

    def wait():
        try:
            receiver.receive("c", timeout=5)
        except TransferDropped as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    receiver.drop("c")
    thread.join(5)
    assert len(errors) == 1

    # A payload that arrives after its key was dropped is discarded; one dropped after arrival is freed.
    receiver.drop("late")
    sender.send("late", payload())
    sender.send("early", payload())
    deadline = time.monotonic() + 5
    while receiver.pending() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)
    assert receiver.pending() == 1  # only "early"
    receiver.drop("early")
    assert receiver.pending() == 0
    if kind == "tcp":
        sender.close()
        receiver.close()


def test_tcp_roles_and_bad_port():
    receiver = TcpConnector.listen()
    sender = TcpConnector.connect(receiver.address)
    with pytest.raises(RuntimeError, match="listens"):
        receiver.send("x", payload())
    with pytest.raises(RuntimeError, match="sends"):
        sender.receive("x", timeout=1)
    with pytest.raises(ValueError, match="port"):
        TcpConnector.listen(port=70000)
    sender.close()
    receiver.close()
