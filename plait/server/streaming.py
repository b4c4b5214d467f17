"""Running engine requests for the HTTP handlers: submit eagerly, merge prompts, abort on disconnect/timeout.

Three guarantees live here, so the endpoint modules only format JSON:
- Bad input and overload are known before the first byte is sent: `start` submits at once and surfaces
  submit's ValueError / QueueFullError, so even a streaming request gets a proper 400 / 503 status.
- A request whose client went away is aborted: streams are closed explicitly when the response ends for any
  reason (`SSEResponse`), and non-streaming handlers race the generation against `http.disconnect`
  (`run_until_disconnect`). Closing/cancelling `AsyncLLM.generate` aborts the request; KV is freed next step.
- `--request-timeout` aborts through the engine, so the stream still ends in an orderly way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from plait.outputs import RequestOutput
from plait.params import SamplingParams
from plait.server.errors import APIError
from plait.server.metrics import RequestTimer, ServerMetrics

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before a non-streaming response was ready."""


class Generation:
    """One engine request (one prompt, n choices), already submitted; iterate `outputs()` for deltas."""

    def __init__(self, engine, prompt: Any, params: SamplingParams, request_id: str, metrics: ServerMetrics,
                 timeout: float | None) -> None:
        self.engine = engine
        self.request_id = request_id
        self.timer = RequestTimer(metrics)
        self.timed_out = False
        self._agen = engine.generate(prompt, params, request_id=request_id, output_kind="delta")
        # Running the first step now makes generate() call submit() (sync validation) before we answer.
        self._first: asyncio.Task = asyncio.ensure_future(self._next())
        self._deadline = None if timeout is None else asyncio.get_running_loop().call_later(timeout, self._expire)

    async def _next(self) -> RequestOutput:
        return await self._agen.__anext__()

    def _expire(self) -> None:
        self.timed_out = True
        self.engine.abort_nowait(self.request_id)

    def submit_error(self) -> BaseException | None:
        """After one event-loop turn: what submit raised, if anything (bad input, queue full, dead engine)."""
        if self._first.done() and not self._first.cancelled():
            return self._first.exception()
        return None

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        out = await self._first
        while True:
            if any(c.token_ids for c in out.outputs):
                self.timer.tokens()
            yield out
            if out.finished:
                self.timer.finish("timeout" if self.timed_out else (out.outputs[0].finish_reason or "stop"))
                return
            out = await self._agen.__anext__()

    async def close(self) -> None:
        """Abort the request unless it already finished; safe to call more than once."""
        if self._deadline is not None:
            self._deadline.cancel()
        if not self._first.done():
            self._first.cancel()
        with contextlib.suppress(BaseException):
            await self._first
        with contextlib.suppress(RuntimeError):  # "already running" cannot happen after the cancel above
            await self._agen.aclose()
        self.timer.finish("abort")


async def start(engine, prompts: list[Any], params: SamplingParams, request_id: str, metrics: ServerMetrics,
                timeout: float | None) -> list[Generation]:
    """Submit every prompt; if any is refused, abort the others and raise what submit raised."""
    gens = [Generation(engine, p, params, request_id if len(prompts) == 1 else f"{request_id}-{i}", metrics,
                       timeout) for i, p in enumerate(prompts)]
    await asyncio.sleep(0)  # each task runs up to its first real wait: submit() has run (FIFO scheduling)
    errors = [g.submit_error() for g in gens]
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        for g, e in zip(gens, errors):
            g.timer.done = e is not None  # refused, not aborted: only `rejected` counts it
            await g.close()
        metrics.rejected(type(error).__name__)
        raise error
    return gens


async def merged(gens: list[Generation]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, delta output) from all generations as they come; closing this closes (aborts) them all."""
    if len(gens) == 1:
        try:
            async for out in gens[0].outputs():
                yield 0, out
        finally:
            await gens[0].close()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, gen: Generation) -> None:
        try:
            async for out in gen.outputs():
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for g in gens:
            await g.close()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so aborting its engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone()
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():  # we were cancelled ourselves
            task.cancel()


async def respond(ctx: "ServerContext", raw: Request, prompts: list[Any], params: SamplingParams, job: Any,
                  stream: bool, map_error: Callable[[Exception], Exception]) -> Any:
    """Start the generations for `job`, then stream them (SSE) or collect them into one response.

    Shared by /v1/completions and /v1/chat/completions; `job` supplies id, stream(gens) and collect(gens);
    `map_error` turns an engine failure into the endpoint's HTTP error.
    """
    from starlette.responses import Response

    try:
        gens = await start(ctx.engine, prompts, params, job.id, ctx.metrics, ctx.request_timeout)
    except Exception as exc:  # noqa: BLE001 - mapped to the right status
        raise map_error(exc) from None
    if stream:
        return SSEResponse(job.stream(gens))
    try:
        return await run_until_disconnect(raw, job.collect(gens))
    except ClientGone:
        return Response(status_code=499)  # nobody is listening; the requests are already aborted
    except Exception as exc:  # noqa: BLE001
        raise map_error(exc) from None
    finally:
        for gen in gens:
            await gen.close()


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its generator, however the response ends.

    Starlette cancels the sending task when the client disconnects; if the generator was parked at a `yield`
    at that moment nothing would resume it, and its engine request would run on until garbage collection. The
    explicit `aclose` here turns every early end into an immediate abort.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self._on_close is not None:
                await self._on_close()


class ServerContext:
    """What every handler needs: the engine, the served name, limits and metrics."""

    def __init__(self, engine, model_name: str, request_timeout: float | None, enable_priority: bool = False) -> None:
        self.engine = engine
        self.model_name = model_name
        self.request_timeout = request_timeout
        self.enable_priority = enable_priority
        self.metrics = ServerMetrics(engine, model_name)
        self.max_model_len: int = engine.max_model_len
        # The longest sequence the KV pool can ever hold: a default max_tokens must fit it, or every request
        # without max_tokens would be refused on a server started with a small --kv-cache-memory.
        self.max_seq_tokens: int = engine.max_seq_tokens

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")

    def check_priority(self, priority: int) -> None:
        """A priority lets a client preempt everyone else's requests: only a server started with
        --enable-priority honours it."""
        if priority != 0 and not self.enable_priority:
            raise APIError(400, "priority is not enabled on this server (start it with --enable-priority); "
                                "send 0 or leave it out", param="priority")

    def default_max_tokens(self, prompt_len: int) -> int | None:
        """Up to the context length (or what the KV pool can hold), as OpenAI's chat default."""
        room = self.max_seq_tokens - prompt_len
        return room if room >= 1 else None
