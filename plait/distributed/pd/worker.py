"""The two halves of the split, each around one AsyncLLM. Used as they are in one process, and as the bodies
of the Ray actors (plait/distributed/pd/router.py).

Prefill: run the request for one token, stream that output, then (unless the request is over) copy its prompt
blocks out in the engine thread and send them. Decode: receive, import them into the prefix cache, run the
request with its own parameters, stream it; the import is unpinned as soon as the request has been admitted.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator

from collections import OrderedDict

from plait.distributed.kv_transfer.connector import MAX_TOMBSTONES, KVConnector
from plait.distributed.kv_transfer.engine_kv import KVImporter, export_prefix
from plait.outputs import RequestOutput
from plait.params import SamplingParams


@dataclass
class TransferInfo:
    """What one transfer moved (the prefill worker's last item for a request that continues)."""

    num_tokens: int
    nbytes: int
    seconds: float  # copying out of the cache and handing to the connector


@dataclass
class ImportInfo:
    """What the decode worker found (its first item for a request)."""

    num_tokens: int  # prompt tokens the decode engine then held cached
    num_written_blocks: int


class _Aborts:
    """Keys aborted before their request reached the engine (an abort may overtake the call that starts it)."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        self._keys[key] = None
        while len(self._keys) > MAX_TOMBSTONES:
            self._keys.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._keys


class _Worker:
    """What both workers do alike: one engine, one connector, and aborts that may overtake their request."""

    def __init__(self, llm: Any, connector: KVConnector) -> None:
        self.llm = llm
        self.connector = connector
        self._aborted = _Aborts()

    def abort(self, key: str) -> None:
        self._aborted.add(key)
        self.llm.abort_nowait(key)

    def drop(self, key: str) -> None:
        self.connector.drop(key)

    def pending_transfers(self) -> int:
        return self.connector.pending()


class PrefillWorker(_Worker):
    async def prefill(self, key: str, token_ids: list[int], params: SamplingParams,
                      send: bool = True) -> AsyncIterator[RequestOutput | TransferInfo]:
        """Yield the request's final output (one token), then, when `send` and it did not stop, a TransferInfo
        once its KV is with the connector. Closing early aborts the request and sends nothing."""
        if key in self._aborted:
            return  # the caller knows: it aborted
        final = None
        async with aclosing(self.llm.generate(token_ids, params, request_id=key, output_kind="final")) as outs:
            async for out in outs:
                final = out
        yield final
        if not send or any(o.finish_reason in ("stop", "abort") for o in final.outputs):
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        payload = await asyncio.wrap_future(self.llm.call_in_engine(export_prefix, self.llm.engine, token_ids))
        payload.first_token = final.outputs[0].token_ids[0] if final.outputs[0].token_ids else None
        await asyncio.to_thread(self.connector.send, key, payload)
        yield TransferInfo(payload.num_tokens, payload.nbytes, loop.time() - started)

    def all_blocks_free(self) -> bool:
        """Tests: no KV block is held (read from outside the engine thread: call it when idle)."""
        return self.llm.engine.scheduler.kv.all_blocks_free()


class DecodeWorker(_Worker):
    def __init__(self, llm: Any, connector: KVConnector) -> None:
        super().__init__(llm, connector)
        self.importer = KVImporter(llm.engine)

    async def decode(self, key: str, token_ids: list[int], params: SamplingParams, timeout: float,
                     receive: bool = True) -> AsyncIterator[RequestOutput | ImportInfo]:
        """Yield an ImportInfo, then the request's delta outputs. `receive=False` runs the request on what the
        engine has cached already (no transfer). Closing early aborts the request and unpins its import."""
        hold = None
        if receive:
            payload = await asyncio.to_thread(self.connector.receive, key, timeout)
            if payload.prompt_token_ids != list(token_ids):
                raise ValueError(f"the KV received for {key!r} belongs to another prompt")
            hold = await asyncio.wrap_future(self.llm.call_in_engine(self.importer.import_payload, payload))
        if key in self._aborted:
            if hold is not None:
                self._release(hold.hold_id)
            return
        yield ImportInfo(hold.num_tokens if hold else 0, hold.num_written if hold else 0)
        try:
            async with aclosing(self.llm.generate(token_ids, params, request_id=key, output_kind="delta")) as outs:
                async for out in outs:
                    if hold is not None:  # admitted: its own block references keep the imported KV now
                        self._release(hold.hold_id)
                        hold = None
                    yield out
        finally:
            if hold is not None:
                self._release(hold.hold_id)

    def _release(self, hold_id: int) -> None:
        try:
            self.llm.call_in_engine(self.importer.release, hold_id)
        except RuntimeError:  # the engine is gone, and its pool with it
            pass

    def all_blocks_free(self) -> bool:
        """Tests: no KV block is held, imports included (call it when idle)."""
        return len(self.importer) == 0 and self.llm.engine.scheduler.kv.all_blocks_free()
