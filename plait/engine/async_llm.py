"""AsyncLLM: the engine core loop in a background thread, one asyncio queue per request.

Callers on any event loop submit requests without blocking on the model: `generate` validates at once (raising
ValueError), hands the request to the loop thread through a command queue, and streams outputs as they come.
Breaking out of the iterator, cancelling the task or `abort()` all abort the request; its KV is freed at the
next step.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from plait.config import EngineConfig
from plait.engine.builder import build_engine, describe
from plait.engine.prefix_hold import PrefixHandle, hold_prefix_async
from plait.engine.engine_facts import EngineFacts
from plait.core.engine_core import check_sample_index
from plait.core.engine_output import EngineOutput, SampleDelta
from plait.engine.output_processor import OUTPUT_KINDS, RequestState
from plait.engine.scoring import encode_pair, score_params, to_score
from plait.engine.weight_buckets import WeightBuckets
from plait.engine.weights import WeightUpdateInfo, WeightUpdater, prepare_update
from plait.outputs import RequestOutput, ScoreOutput
from plait.params import SamplingParams

log = logging.getLogger("plait")


class EngineDeadError(RuntimeError):
    """The engine loop raised; no request can make progress."""


class QueueFullError(RuntimeError):
    """More requests are waiting than `max_waiting_requests` allows."""


@dataclass
class _Stream:
    """One request as its caller's event loop sees it. The engine thread only ever posts callbacks to `loop`;
    output processing (text, stop strings, logprobs) runs there, and a reader that falls behind finds one
    up-to-date state to read, not a queue of copies."""

    loop: asyncio.AbstractEventLoop
    state: RequestState
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    done: bool = False  # finished, failed or aborted: nothing more will come


class AsyncLLM(EngineFacts):
    """The engine in a background thread, for asyncio callers; implements `plait.engine.protocol.EngineClient`."""

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
        self._updater: WeightUpdater | None = None
        self._weight_buckets = WeightBuckets()  # update_weights(..., final=False) stages here
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

    def generate(self, prompt: Any, sampling_params: SamplingParams | None = None,
                 request_id: str | None = None, output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Submit now (bad input raises ValueError here, a full queue QueueFullError) and return the stream.

        output_kind 'delta' yields new text/tokens only, 'cumulative' everything so far, 'final' only the finished
        output. Call it from a coroutine; closing the iterator early aborts the request.
        """
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be 'delta', 'cumulative' or 'final', got {output_kind!r}")
        request_id, stream = self.submit(prompt, sampling_params, request_id)
        return self.stream_outputs(request_id, stream, output_kind)

    async def score(self, prompt: Any, continuation: Any) -> ScoreOutput:
        """Log-probability of `continuation` given `prompt` (text or token ids): per token and summed. A cached
        prompt prefix is not recomputed. Raises ValueError for bad input."""
        ids, start = encode_pair(self.tokenizer, prompt, continuation)
        final = None
        async for out in self.generate(ids, score_params(start), output_kind="final"):
            final = out
        return to_score(final, start)

    async def stream_outputs(self, request_id: str, stream: "_Stream",
                             output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """The outputs of a submitted request, on the stream's event loop; closing early aborts the request."""
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.error is not None:
                    # Tokens generated before the failure still reach a delta reader, then the error: the
                    # engine's last outputs and its death can arrive between two reads.
                    if output_kind == "delta" and stream.state.has_unsent():
                        yield stream.state.output(output_kind)
                    raise stream.error
                if output_kind == "final" and not stream.state.finished:
                    continue
                out = stream.state.output(output_kind)
                yield out
                if out.finished:
                    return
        finally:
            if not stream.done:
                self._abort_stream(request_id, stream)

    def submit(self, prompt: Any, sampling_params: SamplingParams | None = None,
               request_id: str | None = None, loop: asyncio.AbstractEventLoop | None = None) -> tuple[str, _Stream]:
        """Queue a request without waiting for anything; returns (request_id, stream). Raises ValueError
        (bad input or a request id in use) or QueueFullError. Safe to call from many threads at once.

        The stream's outputs are processed on `loop` (default: the running loop), which a caller outside any
        event loop names explicitly and iterates with `stream_outputs(request_id, stream)` there."""
        self._check_alive()
        params = sampling_params or SamplingParams()
        text, token_ids = self.encode(prompt)
        self.engine.validate(token_ids, params)  # the caller gets its ValueError now, not mid-stream
        stream = _Stream(loop or asyncio.get_running_loop(), RequestState(request_id or "", text, token_ids, params,
                                                                          self.tokenizer))
        with self._wake:
            # Every check that reads shared state happens under the lock that guards the insert.
            self._check_alive()  # the loop cannot die or stop between check and insert
            request_id = request_id or f"req-{next(self._ids)}"
            if request_id in self._streams:
                raise ValueError(f"request_id {request_id!r} is already in use")
            if self.max_waiting_requests is not None and len(self._streams) >= self.max_waiting_requests:
                raise QueueFullError(f"{len(self._streams)} requests pending; the limit is "
                                     f"{self.max_waiting_requests}")
            stream.state.request_id = request_id
            self._streams[request_id] = stream
            self._commands.append(("add", request_id, stream, token_ids, params))
            self._wake.notify()
        return request_id, stream

    def _check_alive(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine loop has died: {self.error!r}")
        if self._stopping:
            raise EngineDeadError("the engine is shut down")

    async def abort(self, request_id: str, sample_index: int | None = None) -> None:
        self.abort_nowait(request_id, sample_index)

    def abort_nowait(self, request_id: str, sample_index: int | None = None) -> None:
        """Abort a request (unknown or finished ones: nothing happens). sample_index: only that sample of an
        n > 1 request ends ('abort'); the others go on (ValueError outside [0, n))."""
        with self._wake:
            stream = self._streams.get(request_id)
        if stream is None:
            return
        if sample_index is None:
            self._abort_stream(request_id, stream)
        else:
            check_sample_index(sample_index, stream.state.params.n)
            self._command(("abort_sample", request_id, stream, sample_index))

    def _abort_stream(self, request_id: str, stream: _Stream) -> None:
        # The command names the stream, so a late abort can never hit a new request that reuses the id.
        self._command(("abort", request_id, stream))

    def _command(self, command: tuple) -> None:
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (applied by the engine thread before its next step)."""
        self._command(("reset_prefix_cache", None, None))

    def stats(self):
        return self.engine.stats()

    async def hold_prefix(self, prompt: Any) -> PrefixHandle:
        """Compute `prompt` (text or token ids) if it is not cached and keep its full KV blocks resident until the
        handle's `release()`; see plait/engine/prefix_hold.py. ValueError for bad input or past the bounds."""
        return await hold_prefix_async(self, prompt)

    def call_in_engine(self, fn, *args) -> concurrent.futures.Future:
        """Run `fn(*args)` in the engine thread between steps (engine state is only touched there); the future
        gets its result or exception. Asyncio callers `await asyncio.wrap_future(...)` it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._check_alive()  # under the lock: a loop that stops later still finds this call and fails it
            self._commands.append(("call", None, None, (fn, args), future))
            self._wake.notify()
        return future

    @property
    def weight_version(self):
        """The version of the weights steps run on now (None: as loaded)."""
        return self._updater.version

    def update_weights_nowait(self, weights, version, mode: str = "drain", partial: bool = False,
                              final: bool = True) -> concurrent.futures.Future:
        """Check `weights` now (a bad state dict raises ValueError here and nothing changes), then queue the swap;
        the future resolves to a WeightUpdateInfo once the engine thread has swapped between steps. Modes
        (plait/engine/weights.py): 'abort' ends in-flight requests, 'drain' holds new ones until the running
        ones finish on the old weights, 'continue' swaps at once and in-flight requests go on. `partial=True`:
        `weights` may hold only some tensors. `final=False`: a bucket, staged until the final one (the future
        is already done, with `info.final` False). Asyncio callers `await asyncio.wrap_future(...)` it."""
        self._check_alive()
        update = prepare_update(self._built, weights, version, mode, partial, final, self._weight_buckets)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not update.info.final:
            future.set_result(update.info)
            return future
        self._command(("update_weights", None, None, update, future))
        return future

    def update_weights(self, weights, version, mode: str = "drain", timeout: float | None = None,
                       partial: bool = False, final: bool = True) -> WeightUpdateInfo:
        """`update_weights_nowait` and wait for the swap (blocking: from a thread, not a coroutine)."""
        return self.update_weights_nowait(weights, version, mode, partial, final).result(timeout)

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
            self._updater = WeightUpdater(self._built, self._abort_all)
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
                for command in self._updater.maybe_finish(idle=not self.engine.has_unfinished()):
                    self._apply(command)  # requests held back while a 'drain' update waited
        except BaseException as exc:  # noqa: BLE001 - every in-flight caller must hear about it
            self.error = exc
            log.error("engine loop died:\n%s", traceback.format_exc())
            self._fail_updates(EngineDeadError(f"the engine loop has died: {exc!r}"))
            with self._wake:
                streams = list(self._streams)
            for request_id in streams:
                self._deliver_error(request_id, EngineDeadError(f"the engine loop has died: {exc!r}"))
            return
        self._fail_updates(EngineDeadError("the engine was shut down"))
        with self._wake:
            streams = list(self._streams)
        for request_id in streams:
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver(out)
            else:  # submitted but never picked up
                self._deliver_error(request_id, EngineDeadError("the engine was shut down"))
        # Requests whose callers already have their final output (a stop string ended them in the frontend, and
        # the finish command had not run yet): end them too, so the engine stops holding their KV.
        for request_id in self.engine.request_ids():
            self.engine.abort(request_id)

    def _apply(self, command: tuple) -> None:
        kind, request_id, stream = command[:3]
        if kind == "reset_prefix_cache":
            self.engine.reset_prefix_cache()
            return
        if kind == "update_weights":
            self._updater.start(*command[3:])
            return
        if kind == "call":
            (fn, args), future = command[3:]
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except Exception as exc:  # noqa: BLE001 - the caller's error, not the engine's
                    future.set_exception(exc)
            return
        if kind == "finish_sample":
            # Not gated on the stream: the frontend may already have dropped it (its request is over), and no
            # newer request with this id can be in the engine yet, since commands apply in order.
            self.engine.finish_sample(request_id, *command[3:])
            return
        with self._wake:
            current = self._streams.get(request_id)
        if current is not stream:
            return  # that stream is gone (aborted before pick-up, or finished); the id may be reused since
        if kind == "add" and self._updater.draining:
            self._updater.held.append(command)
            return
        if kind == "abort" and any(held[2] is stream for held in self._updater.held):
            self._updater.held = [held for held in self._updater.held if held[2] is not stream]
            n = stream.state.params.n
            self._deliver(EngineOutput(request_id, [SampleDelta(i, [], finish_reason="abort") for i in range(n)],
                                       finished=True))
            return
        if kind == "abort_sample":
            if any(held[2] is stream for held in self._updater.held):
                self._updater.held.append(command)  # replayed after its held 'add', in order
            elif (out := self.engine.abort(request_id, command[3])) is not None:
                self._deliver(out)
            return
        if kind == "add":
            _, _, _, token_ids, params = command
            try:
                self.engine.add_request(request_id, token_ids, params)
            except ValueError as exc:
                self._deliver_error(request_id, exc)
        else:
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver(out)
            else:
                self._drop(request_id, stream)

    def _fail_updates(self, exc: BaseException) -> None:
        """The loop ends: weight updates waiting to drain or still queued will never happen; their callers hear."""
        self._updater.fail_pending(exc)
        with self._wake:
            queued = [c for c in self._commands if c[0] in ("update_weights", "call")]
        for command in queued:
            if not command[4].done():  # a caller may have cancelled its queued call
                command[4].set_exception(exc)

    def _abort_all(self) -> int:
        """Engine thread: end every request the engine holds (update_weights mode 'abort')."""
        with self._wake:
            request_ids = list(self._streams)
        aborted = 0
        for request_id in request_ids:
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver(out)
                aborted += 1
        return aborted

    def _drop(self, request_id: str, stream: _Stream) -> bool:
        """Forget a stream (its id may be reused from now on); False if it was already gone."""
        with self._wake:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
                return True
            return False

    def _deliver(self, out: EngineOutput) -> None:
        with self._wake:
            stream = self._streams.get(out.request_id)
        if stream is None:
            return
        out.weight_version = self._updater.version  # the weights this step ran on: updates happen between steps
        if out.finished:
            self._drop(out.request_id, stream)
        if not self._post(stream, self._on_output, out.request_id, stream, out):
            # The caller's event loop is closed (it left without waiting): drop its request, not the engine.
            self._drop(out.request_id, stream)
            self.engine.abort(out.request_id)

    def _on_output(self, request_id: str, stream: _Stream, out: EngineOutput) -> None:
        """Runs on the caller's event loop: the frontend's share of the work for one step's news."""
        if stream.done:
            return
        state = stream.state
        for index, stop in state.process(out):
            self._command(("finish_sample", request_id, stream, index, stop))
        if state.finished:
            stream.done = True
            self._drop(request_id, stream)  # a stop string may end it before the engine says so
        stream.ready.set()

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        with self._wake:
            stream = self._streams.pop(request_id, None)
        if stream is not None:
            self._post(stream, self._on_error, stream, exc)

    @staticmethod
    def _on_error(stream: _Stream, exc: BaseException) -> None:
        stream.done = True
        stream.error = exc
        stream.ready.set()

    @staticmethod
    def _post(stream: _Stream, callback, *args) -> bool:
        try:
            stream.loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # event loop closed
            return False
