"""BackgroundLLM: submit and poll from plain synchronous code, on any thread, with no event loop of one's own.

The callers this is for (a simulator stepping at a fixed rate, a gym loop, an RL trainer's rollout workers) must
never block on the model: they submit a request, keep stepping, and pick the result up when it is ready.

How it is built: one `AsyncLLM` (the same engine thread as every other async caller) plus one private asyncio
event loop in a frontend thread, on which every request's outputs are processed (detokenizing, stop strings) and
sorted into inboxes. `submit` returns as soon as the request is queued; the caller thread never touches asyncio.

Who sees what: every request is delivered to exactly one inbox, chosen at submit time (default: the submitting
thread), and `poll` on that inbox returns it exactly once. So many threads submitting and polling at once never
see each other's outputs. `result(request_id)` collects one request instead, whatever its inbox; a request is
collected exactly once, by `poll` or by `result`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Hashable

from plait.engine.async_llm import AsyncLLM, EngineDeadError, QueueFullError
from plait.outputs import RequestOutput
from plait.params import SamplingParams

log = logging.getLogger("plait")

__all__ = ["BackgroundLLM", "QueueFullError", "EngineDeadError"]

# How often a blocked `submit` re-checks the engine's queue. The engine frees a slot in its own thread without
# telling us; our own "finished" notifications wake waiters early, this bounds the wait when they race.
_RETRY_S = 0.005


@dataclass
class _Entry:
    """One submitted request as the frontend keeps it until it is collected."""

    inbox: Hashable
    stream: bool
    final: RequestOutput | None = None  # the complete output, once finished
    error: BaseException | None = None  # why it failed, if it did (result() raises it)


class BackgroundLLM:
    """The engine in the background, for synchronous callers: `submit` now, `poll` or `result` later.

    `BackgroundLLM(model=None, *, max_waiting_requests=None, **engine_config)` takes the same arguments as
    `AsyncLLM`. Named like vLLM's `LLM` / `AsyncLLM` pair: the same engine, run in the background, driven by
    plain calls instead of awaits. Use it as a context manager, or call `shutdown()`.
    """

    def __init__(self, model: str | None = None, *, max_waiting_requests: int | None = None,
                 verbose: bool = False, _prebuilt=None, **config: Any) -> None:
        self.async_llm = AsyncLLM(model, max_waiting_requests=max_waiting_requests, verbose=verbose,
                                  _prebuilt=_prebuilt, **config)
        self._lock = threading.Condition()
        self._requests: dict[str, _Entry] = {}  # submitted (or being submitted) and not yet collected
        self._inboxes: dict[Hashable, list[tuple[str, RequestOutput]]] = {}  # (request id, output), oldest first
        self._ids = itertools.count()
        self._unfinished = 0
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._frontend = threading.Thread(target=self._loop.run_forever, name="plait-frontend", daemon=True)
        self._frontend.start()
        self._closed = False

    # ------------------------------------------------------------------------------------ public API
    @property
    def tokenizer(self):
        return self.async_llm.tokenizer

    @property
    def num_unfinished(self) -> int:
        """Requests submitted and not yet finished (collected or not)."""
        with self._lock:
            return self._unfinished

    def submit(self, prompt: Any, params: SamplingParams | None = None, request_id: str | None = None, *,
               stream: bool = False, block: bool = False, timeout: float | None = None,
               inbox: Hashable | None = None) -> str:
        """Queue a request and return its id at once. Safe from any thread.

        prompt: text or token ids. stream=True delivers deltas (new tokens/text) to `poll` as they come, the
        last one with `finished=True`; otherwise `poll` gets only the finished output. When the engine already
        holds `max_waiting_requests` unfinished requests, `block=False` raises QueueFullError and `block=True`
        waits up to `timeout` seconds (None: forever) for room, then raises QueueFullError. inbox: where `poll`
        finds this request's outputs (any hashable; default the calling thread). Bad input raises ValueError."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        key = threading.current_thread() if inbox is None else inbox
        with self._lock:
            if self._closed:
                raise EngineDeadError("the engine is shut down")
            if request_id is None:
                request_id = f"bg-{next(self._ids)}"
            elif request_id in self._requests:
                raise ValueError(f"request_id {request_id!r} is already in use (submitted and not collected)")
            # Reserve the id before queueing: a concurrent submit of the same id fails here, under our lock,
            # without holding the lock while the prompt is tokenized.
            self._requests[request_id] = entry = _Entry(key, stream)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    request_id, handle = self.async_llm.submit(prompt, params, request_id, loop=self._loop)
                    break
                except QueueFullError:
                    if not block or (deadline is not None and time.monotonic() >= deadline):
                        raise
                    with self._lock:
                        wait = _RETRY_S if deadline is None else min(_RETRY_S, deadline - time.monotonic())
                        self._lock.wait(max(wait, 0.0))
        except BaseException:
            with self._lock:
                del self._requests[request_id]
            raise
        with self._lock:
            self._unfinished += 1
        self._loop.call_soon_threadsafe(self._start_consumer, request_id, handle, entry)
        return request_id

    def poll(self, timeout: float | None = 0, inbox: Hashable | None = None) -> list[RequestOutput]:
        """Outputs that arrived in `inbox` (default: the calling thread's) since its last poll, oldest first:
        finished requests, and the deltas of stream=True requests. Waits up to `timeout` seconds (None: until
        something arrives) when there is nothing yet; returns [] on timeout."""
        key = threading.current_thread() if inbox is None else inbox
        with self._lock:
            if timeout != 0:
                self._lock.wait_for(lambda: self._inboxes.get(key), timeout)
            filed = self._inboxes.pop(key, [])
            for request_id, out in filed:
                if out.finished:
                    entry = self._requests.pop(request_id)
                    if entry.error is not None:
                        log.warning("request %s failed: %r", request_id, entry.error)
        return [out for _, out in filed]

    def result(self, request_id: str, timeout: float | None = None) -> RequestOutput:
        """Wait for one request to finish and collect it (its outputs leave its inbox; `poll` will not return
        them). Returns the complete output (all tokens and text, also for stream=True). Raises TimeoutError, the
        request's error if it failed, or ValueError for an id that is unknown or already collected."""
        with self._lock:
            entry = self._requests.get(request_id)
            if entry is None:
                raise ValueError(f"request_id {request_id!r} is unknown or already collected")
            if not self._lock.wait_for(lambda: entry.final is not None, timeout):
                raise TimeoutError(f"request {request_id!r} did not finish within {timeout} s")
            if self._requests.get(request_id) is not entry:  # another thread collected it while we waited
                raise ValueError(f"request_id {request_id!r} was collected by another caller")
            del self._requests[request_id]
            box = self._inboxes.get(entry.inbox)
            if box is not None:
                box[:] = [filed for filed in box if filed[0] != request_id]
                if not box:
                    del self._inboxes[entry.inbox]
        if entry.error is not None:
            raise entry.error
        return entry.final

    def abort(self, request_id: str, sample_index: int | None = None) -> None:
        """Stop a request; it still finishes, with finish_reason 'abort', through `poll` or `result`.
        Aborting a finished or unknown request does nothing. sample_index: end only that sample of an n > 1
        request; its siblings go on (ValueError outside [0, n))."""
        self.async_llm.abort_nowait(request_id, sample_index)

    def reset_prefix_cache(self) -> None:
        self.async_llm.reset_prefix_cache()

    def hold_prefix(self, prompt: Any, timeout: float | None = None):
        """Blocking `AsyncLLM.hold_prefix` (computes the prefix if needed): returns its PrefixHandle."""
        return asyncio.run_coroutine_threadsafe(self.async_llm.hold_prefix(prompt), self._loop).result(timeout)

    def stats(self):
        return self.async_llm.stats()

    @property
    def weight_version(self):
        return self.async_llm.weight_version

    def update_weights(self, weights, version, mode: str = "drain", block: bool = True,
                       timeout: float | None = None, partial: bool = False, final: bool = True):
        """Swap in new weights between engine steps (see AsyncLLM.update_weights_nowait for the modes, `partial`
        and buckets with `final=False`). Bad weights raise ValueError at once. block=True waits for the swap and
        returns its WeightUpdateInfo; block=False returns a concurrent.futures.Future of it."""
        future = self.async_llm.update_weights_nowait(weights, version, mode, partial, final)
        return future.result(timeout) if block else future

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the engine. Unfinished requests end (finish_reason 'abort') and can still be polled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.async_llm.shutdown(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:  # let the consumers file the last outputs before the frontend loop stops
            self._lock.wait_for(lambda: self._unfinished == 0, max(deadline - time.monotonic(), 0.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._frontend.join(max(deadline - time.monotonic(), 0.1))
        if not self._frontend.is_alive():
            self._loop.close()

    def __enter__(self) -> "BackgroundLLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------------------------ frontend thread
    def _start_consumer(self, request_id: str, handle, entry: _Entry) -> None:
        task = self._loop.create_task(self._consume(request_id, handle, entry))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, request_id: str, handle, entry: _Entry) -> None:
        last = None
        try:
            async for out in self.async_llm.stream_outputs(request_id, handle,
                                                           "delta" if entry.stream else "final"):
                last = out
                if out.finished:
                    self._file(request_id, entry, out,
                               final=handle.state.output("cumulative") if entry.stream else out)
                else:
                    self._file(request_id, entry, out)
        except BaseException as exc:  # noqa: BLE001 - the caller hears of it through result()/poll()
            # Failed (engine died or shut down, or the engine refused the request): it still ends, once, with
            # every unfinished sample marked 'abort', so a poller can account for every request it submitted.
            final = handle.state.output("cumulative")
            for sample in final.outputs:
                sample.finish_reason = sample.finish_reason or "abort"
            final.finished = True
            entry.error = exc
            self._file(request_id, entry, final, final=final)
            if not isinstance(exc, Exception):
                raise
        else:
            if last is None or not last.finished:  # stream_outputs ended without a final output: cannot happen
                raise AssertionError(f"request {request_id} ended without a final output")

    def _file(self, request_id: str, entry: _Entry, out: RequestOutput,
              final: RequestOutput | None = None) -> None:
        with self._lock:
            if self._requests.get(request_id) is not entry:
                return  # collected by result() already (it only collects finished requests: cannot happen)
            self._inboxes.setdefault(entry.inbox, []).append((request_id, out))
            if final is not None:
                entry.final = final
                self._unfinished -= 1
            self._lock.notify_all()
