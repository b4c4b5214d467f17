"""The split's front door over two workers: `PDClient` (two engines in this process) and the base that
`PDRouter` (two Ray actors) shares. Both implement the engine-client protocol (plait/engine/protocol.py).

Per request (n == 1):
1. the prefill worker runs it with max_tokens=1 and the request's own sampling settings (a request without a
   seed gets a random one, so both workers draw the same first token); that token is the caller's first;
2. unless the request is over, the prefill worker copies the prompt's full KV blocks out and sends them;
3. the decode worker imports them into its prefix cache and runs the request with its own parameters; it
   computes the prompt's last block (1 to block_size tokens) and so the first token again: equal to the
   prefill's, it is skipped. If the two disagree (possible only when the engines are not batch-invariant and
   a near-tie flips), the decode worker restarts from prompt + first token, so the stream stays consistent.
n > 1 or prompt_logprobs: the prefill worker only computes the KV (one greedy token, dropped); every token
comes from the decode worker.
Closing the stream or `abort()` aborts the request on both workers and drops its KV on both sides.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from plait.distributed.kv_transfer.connector import InProcessConnector, KVConnector, TransferDropped
from plait.distributed.pd.merge import aborted, to_engine_output
from plait.distributed.pd.worker import DecodeWorker, ImportInfo, PrefillWorker, TransferInfo
from plait.engine.async_llm import EngineDeadError, QueueFullError
from plait.engine.engine_facts import EngineFacts
from plait.engine.output_processor import OUTPUT_KINDS, RequestState
from plait.outputs import RequestOutput
from plait.params import MAX_SEED, SamplingParams

log = logging.getLogger("plait.distributed")

KV_TIMEOUT = 120.0  # seconds the decode worker waits for a request's KV


@dataclass
class PDStats:
    """The split's own counters (the engines' are in `stats()`)."""

    requests: int = 0
    transfers: int = 0
    transferred_tokens: int = 0
    transferred_bytes: int = 0
    imported_tokens: int = 0  # prompt tokens the decode engine found cached when the request arrived
    first_token_mismatches: int = 0


@dataclass(eq=False)
class _Entry:
    key: str
    n: int
    aborted: bool = False
    decode_started: bool = False


@dataclass
class LocalHandle:
    """A worker object in this process."""

    worker: Any

    def stream(self, method: str, *args: Any) -> AsyncIterator:
        return getattr(self.worker, method)(*args)

    def call(self, method: str, *args: Any) -> None:
        getattr(self.worker, method)(*args)


class PDBase(EngineFacts):
    """The orchestration; subclasses provide the handles, the tokenizer, `engine` (a validator) and stats."""

    prefill: Any  # handles with stream(method, *args) and call(method, *args)
    decode: Any
    tokenizer: Any
    engine: Any  # an EngineCore whose validate() makes the workers' submission checks

    def _setup(self, max_waiting_requests: int | None, kv_timeout: float) -> None:
        if max_waiting_requests is not None and max_waiting_requests < 1:
            raise ValueError(f"max_waiting_requests must be >= 1, got {max_waiting_requests}")
        if not kv_timeout > 0:
            raise ValueError(f"kv_timeout must be > 0 seconds, got {kv_timeout!r}")
        self.max_waiting_requests = max_waiting_requests
        self.kv_timeout = kv_timeout
        self.pd_stats = PDStats()
        self._pending: dict[str, _Entry] = {}
        self._ids = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------------------------ engine surface
    @property
    def is_running(self) -> bool:
        return self.error is None

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def generate(self, prompt: Any, sampling_params: SamplingParams | None = None,
                 request_id: str | None = None, output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Validate and admit now (ValueError, QueueFullError, EngineDeadError raise here), return the stream.
        Closing it early aborts the request on both workers."""
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'delta', 'cumulative' or 'final', got {output_kind!r}")
        error = self.error
        if error is not None:
            raise error
        params = sampling_params or SamplingParams()
        text, token_ids = self.encode(prompt)
        self.engine.validate(token_ids, params)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._pending:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.max_waiting_requests is not None and len(self._pending) >= self.max_waiting_requests:
            raise QueueFullError(f"{len(self._pending)} requests pending; the limit is {self.max_waiting_requests}")
        # The key names the transfer: unique even when a caller reuses a request id later.
        entry = self._pending[request_id] = _Entry(f"{request_id}@{uuid.uuid4().hex[:12]}", params.n)
        self.pd_stats.requests += 1
        return self._run(request_id, entry, text, token_ids, params, output_kind)

    async def score(self, prompt: Any, continuation: Any) -> Any:
        """A ScoreOutput, as `AsyncLLM.score` (the decode worker computes the continuation's logprobs)."""
        from plait.engine.scoring import score_request

        return await score_request(self, prompt, continuation)

    async def abort(self, request_id: str, sample_index: int | None = None) -> None:
        self.abort_nowait(request_id, sample_index)

    def abort_nowait(self, request_id: str, sample_index: int | None = None) -> None:
        """End a request on both workers (unknown or finished ones: nothing happens). Aborting one sample of an
        n > 1 request is not supported across the split: ValueError."""
        entry = self._pending.get(request_id)
        if entry is None:
            return
        if sample_index is not None:
            raise ValueError("sample_index: aborting one sample is not supported with the prefill/decode split; "
                             "abort the whole request (sample_index=None)")
        entry.aborted = True
        for handle in (self.prefill, self.decode):
            handle.call("abort", entry.key)
        self._drop(entry.key)

    def _drop(self, key: str) -> None:
        for handle in (self.prefill, self.decode):
            handle.call("drop", key)

    # ------------------------------------------------------------------------------------ one request
    async def _run(self, request_id: str, entry: _Entry, text: str | None, token_ids: list[int],
                   params: SamplingParams, output_kind: str) -> AsyncIterator[RequestOutput]:
        key = entry.key
        state = RequestState(request_id, text, token_ids, params, self.tokenizer)
        resolved_max = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(token_ids)
        # The prefill worker's token is the caller's first, except for n > 1 (the samples are decode's) and
        # prompt_logprobs requests (the decode worker computes those positions, and the first token with them).
        early = params.n == 1 and params.prompt_logprobs is None
        if early and params.seed is None:
            params = replace(params, seed=secrets.randbelow(MAX_SEED))
        if early:
            p_params = replace(params, max_tokens=1, min_tokens=min(params.min_tokens, 1), prompt_logprobs=None,
                               prompt_logprobs_start=None)
        else:
            p_params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        send = not early or resolved_max > 1
        done = False
        try:
            first_token = None
            transfer = None
            prefill = aclosing(self.prefill.stream("prefill", key, token_ids, p_params, send))
            async with prefill as items:
                async for item in items:
                    if isinstance(item, TransferInfo):
                        transfer = item
                        continue
                    if item.outputs[0].finish_reason == "abort" or entry.aborted:
                        state.process(aborted(request_id, params.n))
                    elif early:
                        over = item.outputs[0].finish_reason == "stop" or resolved_max == 1
                        state.process(to_engine_output(item, running=not over))
                        first_token = item.outputs[0].token_ids[0] if item.outputs[0].token_ids else None
                    if (early or state.finished) and (out := self._emit(state, output_kind)) is not None:
                        yield out
                    if state.finished:
                        done = True
                        return
            if entry.aborted:
                state.process(aborted(request_id, params.n))
                done = True
                if (out := self._emit(state, output_kind)) is not None:
                    yield out
                return
            if transfer is None:  # nothing was sent although the request goes on: the prefill engine stopped it
                raise RuntimeError(f"the prefill worker ended request {request_id!r} without sending its KV")
            self.pd_stats.transfers += 1
            self.pd_stats.transferred_tokens += transfer.num_tokens
            self.pd_stats.transferred_bytes += transfer.nbytes
            async for out in self._decode(request_id, entry, state, token_ids, params, first_token, resolved_max):
                if (emitted := self._emit(state, output_kind)) is not None:
                    yield emitted
            if not state.finished:
                raise RuntimeError(f"the decode worker ended request {request_id!r} without a final output")
            done = True
        except TransferDropped:
            if not entry.aborted:
                raise
            state.process(aborted(request_id, params.n))
            done = True
            if (out := self._emit(state, output_kind)) is not None:
                yield out
        finally:
            if not done:  # the caller left early, or an error: end it on both sides
                entry.aborted = True
                for handle in (self.prefill, self.decode):
                    handle.call("abort", entry.key)
            self._drop(key)
            if self._pending.get(request_id) is entry:
                del self._pending[request_id]

    async def _decode(self, request_id: str, entry: _Entry, state: RequestState, token_ids: list[int],
                      params: SamplingParams, first_token: int | None, resolved_max: int) -> AsyncIterator[None]:
        """Feed the decode worker's outputs into `state`; yields after each."""
        if entry.aborted:
            state.process(aborted(request_id, params.n))
            yield None
            return
        skip = first_token is not None
        stream = self.decode.stream("decode", entry.key, token_ids, params, self.kv_timeout, True)
        restart = False
        try:
            async for item in stream:
                if isinstance(item, ImportInfo):
                    self.pd_stats.imported_tokens += item.num_tokens
                    continue
                if item.prompt_logprobs is not None:
                    state.prompt_logprobs = item.prompt_logprobs
                if skip and item.outputs[0].token_ids:
                    skip = False
                    if item.outputs[0].token_ids[0] != first_token:
                        restart = True
                        break
                    state.process(to_engine_output(item, skip_first=True))
                else:
                    state.process(to_engine_output(item))
                yield None
                if state.finished:
                    return
        finally:
            await stream.aclose()
        if entry.aborted and not state.finished:  # aborted before the decode worker started it
            state.process(aborted(request_id, params.n))
            yield None
            return
        if restart:
            async for _ in self._restart(request_id, entry, state, token_ids, params, first_token, resolved_max):
                yield None

    async def _restart(self, request_id: str, entry: _Entry, state: RequestState, token_ids: list[int],
                       params: SamplingParams, first_token: int, resolved_max: int) -> AsyncIterator[None]:
        """The decode engine's first token differs from the prefill's (float rounding, engines not
        batch-invariant): continue from prompt + the prefill's token instead, which the decode engine now has
        cached. Penalties then count that token as prompt, and a seeded request draws a new stream."""
        self.pd_stats.first_token_mismatches += 1
        log.warning("request %s: the decode worker's first token differs from the prefill worker's; continuing "
                    "from the prefill's token", request_id)
        rest = replace(params, max_tokens=resolved_max - 1, min_tokens=max(params.min_tokens - 1, 0),
                       prompt_logprobs=None, prompt_logprobs_start=None)
        entry.key = f"{entry.key}+1"
        stream = self.decode.stream("decode", entry.key, token_ids + [first_token], rest, self.kv_timeout, False)
        try:
            async for item in stream:
                if isinstance(item, ImportInfo):
                    continue
                state.process(to_engine_output(item))
                yield None
                if state.finished:
                    return
        finally:
            await stream.aclose()

    @staticmethod
    def _emit(state: RequestState, output_kind: str) -> RequestOutput | None:
        if output_kind == "final" and not state.finished:
            return None
        return state.output(output_kind)


class PDClient(PDBase):
    """The split over two engines in this process: `PDClient(prefill_llm, decode_llm, connector=None)`.

    Both are AsyncLLMs over the same model, dtype and block_size (the decode one with the prefix cache on).
    Mostly for tests and for trying a connector; `PDRouter` puts the two on separate Ray workers."""

    def __init__(self, prefill_llm: Any, decode_llm: Any, connector: KVConnector | None = None,
                 decode_connector: KVConnector | None = None, *, max_waiting_requests: int | None = None,
                 kv_timeout: float = KV_TIMEOUT) -> None:
        """`connector`: both sides' connector (default: an InProcessConnector); `decode_connector`: the decode
        side's, when the two sides use separate ends (a TcpConnector pair)."""
        connector = connector or InProcessConnector()
        self.prefill_worker = PrefillWorker(prefill_llm, connector)
        self.decode_worker = DecodeWorker(decode_llm, decode_connector or connector)
        self.prefill, self.decode = LocalHandle(self.prefill_worker), LocalHandle(self.decode_worker)
        self.tokenizer = decode_llm.tokenizer
        self.engine = decode_llm.engine
        self._llms = (prefill_llm, decode_llm)
        self._setup(max_waiting_requests, kv_timeout)

    @property
    def error(self) -> BaseException | None:
        if self._closed:
            return EngineDeadError("the prefill/decode client is shut down")
        for llm in self._llms:
            if llm.error is not None:
                return EngineDeadError(f"an engine of the split has died: {llm.error!r}")
        return None

    def stats(self):
        from plait.distributed.offline import sum_stats

        return sum_stats([llm.stats() for llm in self._llms])

    def reset_prefix_cache(self) -> None:
        for llm in self._llms:
            llm.reset_prefix_cache()

    def shutdown(self) -> None:
        self._closed = True
        for llm in self._llms:
            llm.shutdown()
