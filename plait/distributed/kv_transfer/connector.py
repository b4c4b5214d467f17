"""The KV connector contract, and the in-process connector.

Contract (every implementation):
- `send(key, payload)` hands one request's KV to the other side; it returns once the connector has taken it
  (the caller may then reuse its blocks). A key that was dropped is discarded, not delivered.
- `receive(key, timeout)` waits for the payload sent under `key` and takes it (a second receive waits again);
  TimeoutError after `timeout` seconds, `TransferDropped` as soon as the key is dropped.
- `drop(key)` forgets the key on this side: a payload held here is freed, one still on its way is discarded on
  arrival, and a receive waiting for it ends. Dropping twice, or an unknown key, does nothing.
- `pending()` counts payloads held on this side and not yet taken (the leak check: 0 when idle).
- `bytes_sent` / `bytes_received`: layer bytes moved so far (headers not counted).
Keys are unique per request (the router makes them); a key is never reused after drop.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol, runtime_checkable

from plait.distributed.kv_transfer.payload import KVPayload

MAX_TOMBSTONES = 65536  # dropped keys remembered so a late arrival is discarded (oldest forgotten first)


class TransferDropped(RuntimeError):
    """The request's KV transfer was dropped (the request was aborted)."""


@runtime_checkable
class KVConnector(Protocol):
    bytes_sent: int
    bytes_received: int

    def send(self, key: str, payload: KVPayload) -> None: ...

    def receive(self, key: str, timeout: float) -> KVPayload: ...

    def drop(self, key: str) -> None: ...

    def pending(self) -> int: ...


class Mailbox:
    """Payloads by key, with waiting receivers and tombstones for dropped keys. Thread-safe."""

    def __init__(self) -> None:
        self._items: dict[str, KVPayload] = {}
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()

    def put(self, key: str, payload: KVPayload) -> bool:
        """Store a payload; False (and nothing stored) when the key was dropped."""
        with self._cond:
            if key in self._dropped:
                return False
            self._items[key] = payload
            self._cond.notify_all()
            return True

    def take(self, key: str, timeout: float) -> KVPayload:
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if key in self._dropped:
                    raise TransferDropped(f"the KV transfer of {key!r} was dropped")
                payload = self._items.pop(key, None)
                if payload is not None:
                    return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no KV arrived for {key!r} within {timeout} s")
                self._cond.wait(left)

    def drop(self, key: str) -> None:
        with self._cond:
            self._items.pop(key, None)
            self._dropped[key] = None
            while len(self._dropped) > MAX_TOMBSTONES:
                self._dropped.popitem(last=False)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class InProcessConnector:
    """Both sides in one process (unit tests, two engines in one program): the payload is handed over as is."""

    def __init__(self) -> None:
        self._box = Mailbox()
        self.bytes_sent = 0
        self.bytes_received = 0

    def send(self, key: str, payload: KVPayload) -> None:
        if self._box.put(key, payload):
            self.bytes_sent += payload.nbytes

    def receive(self, key: str, timeout: float) -> KVPayload:
        payload = self._box.take(key, timeout)
        self.bytes_received += payload.nbytes
        return payload

    def drop(self, key: str) -> None:
        self._box.drop(key)

    def pending(self) -> int:
        return len(self._box)
