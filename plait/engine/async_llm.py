"""AsyncLLM: the engine core loop in a background thread, one asyncio queue per request.

Callers on any event loop submit requests without blocking on the model: `generate` validates at once (raising
ValueError), hands the request to the loop thread through a command queue, and streams outputs as they come.
Breaking out of the iterator, cancelling the task or `abort()` all abort the request; its KV is freed at the
next step.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import traceback
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

from plait.config import EngineConfig
from plait.engine.builder import build_engine, describe
from plait.engine.prompts import encode_prompt
from plait.engine.scoring import encode_pair, score_params, to_score
from plait.outputs import CompletionOutput, RequestOutput, ScoreOutput
from plait.params import SamplingParams

log = logging.getLogger("plait")


class EngineDeadError(RuntimeError):
    """The engine loop raised; no request can make progress."""


class QueueFullError(RuntimeError):
    """More requests are waiting than `max_waiting_requests` allows."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    finished: bool = False


class AsyncLLM:
    def __init__(self, model: str | None = None, *, max_waiting_requests: int | None = None, verbose: bool = False,
                 _prebuilt=None, **config: Any) -> None:
        self.config = EngineConfig(model=model, **config)
        self.max_waiting_requests = max_waiting_requests
        self._commands: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._stopping = False
        self.error: BaseException | None = None
        # The engine is built inside the thread that then runs it. Why: OpenMP keeps one worker pool per thread
        # that runs parallel ops; once two pools exist, libgomp has more threads than cores and stops spinning at
        # its barriers, and every small op pays a futex wake-up. Measured: batch-1 decode 10.8 ms/token when
        # build and steps share a thread, 22.6 ms when the caller's thread built (and so owned a pool).
        self._built = _prebuilt
        ready = threading.Event()
        self._thread = threading.Thread(target=self._build_and_loop, args=(ready,), name="plait-engine",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error
        if verbose:
            print(describe(self._built))

    # ------------------------------------------------------------------------------------ public API
    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def num_pending(self) -> int:
        """Requests submitted but not yet finished (waiting + running + not yet picked up).
        `max_waiting_requests` bounds this number."""
        return len(self._streams)

    def encode(self, prompt: Any) -> tuple[str | None, list[int]]:
        return encode_prompt(self.tokenizer, prompt)

    def generate(self, prompt: Any, sampling_params: SamplingParams | None = None,
                 request_id: str | None = None, output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Submit now (bad input raises ValueError here, a full queue QueueFullError) and return the stream.

        output_kind 'delta' yields new text/tokens only, 'cumulative' everything so far, 'final' only the finished
        output. Call it from a coroutine; closing the iterator early aborts the request.
        """
        if output_kind not in ("delta", "cumulative", "final"):
            raise ValueError(f"output_kind must be 'delta', 'cumulative' or 'final', got {output_kind!r}")
        request_id, stream = self.submit(prompt, sampling_params, request_id)
        return self._iterate(request_id, stream, output_kind)

    async def score(self, prompt: Any, continuation: Any) -> ScoreOutput:
        """Log-probability of `continuation` given `prompt` (text or token ids): per token and summed. A cached
        prompt prefix is not recomputed. Raises ValueError for bad input."""
        ids, start = encode_pair(self.tokenizer, prompt, continuation)
        final = None
        async for out in self.generate(ids, score_params(start), output_kind="final"):
            final = out
        return to_score(final, start)

    async def _iterate(self, request_id: str, stream: "_Stream", output_kind: str) -> AsyncIterator[RequestOutput]:
        queue = stream.queue
        sent: dict[int, tuple[int, int, int]] = {}
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if output_kind == "final" and not item.finished:
                    continue
                yield _delta(item, sent) if output_kind == "delta" else item
                if item.finished:
                    return
        finally:
            if not stream.finished:
                self._abort_stream(request_id, stream)

    def submit(self, prompt: Any, sampling_params: SamplingParams | None = None,
               request_id: str | None = None) -> tuple[str, _Stream]:
        """Queue a request without waiting for anything; returns (request_id, stream). Raises ValueError."""
        self._check_alive()
        params = sampling_params or SamplingParams()
        text, token_ids = self.encode(prompt)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.max_waiting_requests is not None and len(self._streams) >= self.max_waiting_requests:
            raise QueueFullError(f"{len(self._streams)} requests pending; the limit is {self.max_waiting_requests}")
        self.engine.validate(token_ids, params)  # the caller gets its ValueError now, not mid-stream
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._wake:
            self._check_alive()  # again under the lock: the loop cannot die or stop between check and insert
            self._streams[request_id] = stream
            self._commands.append(("add", request_id, stream, token_ids, params, text))
            self._wake.notify()
        return request_id, stream

    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine loop has died: {self.error!r}")
        if self._stopping:
            raise EngineDeadError("the engine is shut down")

    async def abort(self, request_id: str) -> None:
        self.abort_nowait(request_id)

    def abort_nowait(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._abort_stream(request_id, stream)

    def _abort_stream(self, request_id: str, stream: _Stream) -> None:
        # The command names the stream, so a late abort can never hit a new request that reuses the id.
        with self._wake:
            self._commands.append(("abort", request_id, stream))
            self._wake.notify()

    def stats(self):
        return self.engine.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ engine thread
    def _build_and_loop(self, ready: threading.Event) -> None:
        try:
            if self._built is None:
                self._built = build_engine(self.config)
            self.engine, self.tokenizer = self._built.core, self._built.tokenizer
        except BaseException as exc:  # noqa: BLE001 - re-raised by __init__ in the caller's thread
            self.error = exc
            return
        finally:
            ready.set()  # after engine and tokenizer are set: __init__ returns and callers use them at once
        self._loop()

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._commands and not self.engine.has_unfinished() and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                for command in commands:
                    self._apply(command)
                for out in self.engine.step():
                    self._deliver(out)
        except BaseException as exc:  # noqa: BLE001 - every in-flight caller must hear about it
            self.error = exc
            log.error("engine loop died:\n%s", traceback.format_exc())
            with self._wake:
                streams = list(self._streams)
            for request_id in streams:
                self._deliver_error(request_id, EngineDeadError(f"the engine loop has died: {exc!r}"))
            return
        with self._wake:
            streams = list(self._streams)
        for request_id in streams:
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver(out)
            else:  # submitted but never picked up
                self._deliver_error(request_id, EngineDeadError("the engine was shut down"))

    def _apply(self, command: tuple) -> None:
        kind, request_id, stream = command[:3]
        if self._streams.get(request_id) is not stream:
            return  # that stream is gone (aborted before pick-up, or finished); the id may be reused since
        if kind == "add":
            _, _, _, token_ids, params, text = command
            try:
                self.engine.add_request(request_id, token_ids, params, prompt=text)
            except ValueError as exc:
                self._deliver_error(request_id, exc)
        else:
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver(out)
            else:
                self._streams.pop(request_id, None)

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if out.finished:
            stream.finished = True
            del self._streams[out.request_id]
        if not self._post(stream, out):
            # The caller's event loop is closed (it left without waiting): drop its request, not the engine.
            self._streams.pop(out.request_id, None)
            self.engine.abort(out.request_id)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.finished = True
            self._post(stream, exc)

    @staticmethod
    def _post(stream: _Stream, item: object) -> bool:
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
            return True
        except RuntimeError:  # event loop closed
            return False


def _delta(out: RequestOutput, sent: dict[int, tuple[int, int, int]]) -> RequestOutput:
    """Only what is new since the last output of this stream (text, token ids, logprobs)."""
    outputs = []
    for c in out.outputs:
        text_len, tok_len, lp_len = sent.get(c.index, (0, 0, 0))
        outputs.append(CompletionOutput(
            index=c.index, text=c.text[text_len:], token_ids=c.token_ids[tok_len:],
            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
            logprobs=None if c.logprobs is None else c.logprobs[lp_len:], cumulative_logprob=c.cumulative_logprob))
        sent[c.index] = (len(c.text), len(c.token_ids), len(c.logprobs or []))
    return replace(out, outputs=outputs)
