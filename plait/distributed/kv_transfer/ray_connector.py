"""KV through Ray's object store: the prefill side `ray.put`s the payload (its layer arrays are stored once,
out of band) and leaves the object ref with a small mailbox actor under the request's key; the decode side
takes the ref there and reads the arrays (zero-copy when both workers share a node's object store, fetched by
Ray across nodes otherwise). Dropping a key removes its ref, so Ray frees the object.

Both sides hold a `RayConnector` over the same mailbox actor (`RayConnector.create()` starts one).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from plait.distributed.kv_transfer.connector import MAX_TOMBSTONES, TransferDropped
from plait.distributed.kv_transfer.payload import KVPayload


class KVMailbox:
    """The actor body: object refs by key (each wrapped in a list, so Ray passes the ref, not its value)."""

    def __init__(self) -> None:
        self._items: dict[str, list] = {}
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._events: dict[str, asyncio.Event] = {}

    async def put(self, key: str, wrapped: list) -> bool:
        if key in self._dropped:
            return False
        self._items[key] = wrapped
        self._event(key).set()
        return True

    async def take(self, key: str, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        try:
            while True:
                if key in self._dropped:
                    raise TransferDropped(f"the KV transfer of {key!r} was dropped")
                if key in self._items:
                    return self._items.pop(key)
                event = self._event(key)
                event.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no KV arrived for {key!r} within {timeout} s")
                try:
                    await asyncio.wait_for(event.wait(), left)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._events.pop(key, None)

    async def drop(self, key: str) -> None:
        self._items.pop(key, None)
        self._dropped[key] = None
        while len(self._dropped) > MAX_TOMBSTONES:
            self._dropped.popitem(last=False)
        if key in self._events:
            self._events[key].set()

    async def size(self) -> int:
        return len(self._items)

    def _event(self, key: str) -> asyncio.Event:
        if key not in self._events:
            self._events[key] = asyncio.Event()
        return self._events[key]


class RayConnector:
    """One side's handle on a mailbox actor. Blocking calls: workers run them in a thread."""

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox
        self.bytes_sent = 0
        self.bytes_received = 0

    @staticmethod
    def create(ray: Any) -> "RayConnector":
        # Few CPUs: it only moves refs. max_concurrency: many receivers wait at once.
        actor = ray.remote(KVMailbox).options(num_cpus=0, max_concurrency=1000).remote()
        return RayConnector(actor)

    def send(self, key: str, payload: KVPayload) -> None:
        import ray

        ref = ray.put(payload)
        if ray.get(self.mailbox.put.remote(key, [ref])):
            self.bytes_sent += payload.nbytes

    def receive(self, key: str, timeout: float) -> KVPayload:
        import ray

        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        try:
            (ref,) = ray.get(self.mailbox.take.remote(key, timeout))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None
        payload = ray.get(ref)
        self.bytes_received += payload.nbytes
        return payload

    def drop(self, key: str) -> None:
        self.mailbox.drop.remote(key)

    def pending(self) -> int:
        import ray

        return ray.get(self.mailbox.size.remote())
