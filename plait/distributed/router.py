"""RayRouter: the server's engine over N data-parallel replicas, each an `AsyncLLM` in a Ray actor.

It offers the surface the HTTP server uses on a local `AsyncLLM` (generate as an async iterator of outputs,
abort / abort_nowait, tokenizer, the engine's limits, stats, is_running / error, num_pending, shutdown), so
`build_app(router, ...)` serves N replicas unchanged. Per request:

1. tokenize and validate here (the replica's own checks, `replica.validator`), so bad input and overload are
   refused at submission, before a streaming response has started;
2. pick the replica most likely to hold the longest cached prefix of the prompt, else the least loaded
   (`placement.PrefixRouter`, over the replicas' own block digests);
3. stream its outputs back through Ray's streaming generator; closing the iterator aborts it on the replica.

A replica that dies ends its in-flight streams with `EngineDeadError` (Ray raises at once when an actor dies),
is left out of routing from then on, and is reported by `health_detail()`; the others keep serving. A monitor
thread pings each replica and caches its `stats()` every `health_interval` seconds, so /metrics and /health
never block the event loop on a remote call.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, AsyncIterator

from plait.core.engine_core import EngineStats, check_sample_index
from plait.distributed.offline import sum_stats
from plait.distributed.placement import PrefixRouter, block_digests
from plait.distributed.ray_env import require_ray
from plait.distributed.replica import (EngineFactory, replica_config, start_replicas, stop_replicas,
                                       validator)
from plait.engine.async_llm import EngineDeadError, QueueFullError
from plait.engine.engine_facts import EngineFacts
from plait.engine.scoring import score_request
from plait.outputs import RequestOutput, ScoreOutput
from plait.params import SamplingParams

log = logging.getLogger("plait.distributed")

_GAUGES = ("running", "waiting", "kv_blocks_used", "kv_blocks_total")  # what a dead replica no longer has


@dataclass(eq=False)
class _Entry:
    """One routed request (compared by identity)."""

    index: int
    n: int = 1  # samples of the request (a per-sample abort is checked against it)


@dataclass
class ReplicaState:
    """What the router knows about one replica (for /health and the per-replica metrics)."""

    index: int
    alive: bool = True
    error: str | None = None
    in_flight: int = 0
    stats: EngineStats | None = None


class RayRouter(EngineFacts):
    """`RayRouter(model=None, data_parallel_size=N, max_waiting_requests=None, **engine_config)`."""

    def __init__(self, model: str | None = None, *, data_parallel_size: int, num_cpus_per_replica: int = 1,
                 ray_address: str | None = None, max_waiting_requests: int | None = None,
                 max_imbalance: int = 8, health_interval: float = 1.0,
                 _engine_factory: EngineFactory | None = None, **config: Any) -> None:
        if max_waiting_requests is not None and max_waiting_requests < 1:
            raise ValueError(f"max_waiting_requests must be >= 1, got {max_waiting_requests}")
        self._ray = require_ray("plait serve --data-parallel-size")
        self.config = replica_config(dict(config, model=model), num_cpus_per_replica, offline=False)
        # Replicas get no pending limit of their own: the router's limit is the server's back-pressure.
        self.replicas, infos = start_replicas(data_parallel_size, self.config, num_cpus=num_cpus_per_replica,
                                              factory=_engine_factory, address=ray_address,
                                              feature="plait serve --data-parallel-size")
        self.info = infos[0]
        self.tokenizer = self.info.tokenizer
        # An engine core that never steps: validates like a replica and knows the limits (the EngineClient
        # properties below read it).
        self.engine = validator(replace(self.info, num_blocks=min(i.num_blocks for i in infos)))
        self.max_waiting_requests = max_waiting_requests
        self.policy = PrefixRouter(len(self.replicas), self.engine.scheduler.kv.num_blocks, max_imbalance)
        self.states = [ReplicaState(i) for i in range(len(self.replicas))]
        self._pending: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopping = threading.Event()
        self.health_interval = health_interval
        self.refresh()
        self._monitor = threading.Thread(target=self._watch, name="plait-ray-monitor", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------------------------------ engine surface
    @property
    def is_running(self) -> bool:
        """True while at least one replica serves."""
        return not self._stopping.is_set() and any(s.alive for s in self.states)

    @property
    def error(self) -> BaseException | None:
        """None while serving; else why not (shut down, or every replica dead)."""
        if self._stopping.is_set():
            return EngineDeadError("the router is shut down")
        if any(s.alive for s in self.states):
            return None
        return EngineDeadError("every replica has died: " + "; ".join(
            f"replica {s.index}: {s.error}" for s in self.states))

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    @property
    def data_parallel_size(self) -> int:
        return len(self.replicas)

    def reset_prefix_cache(self) -> None:
        """Every replica forgets its cached prefixes (and the router its view of them)."""
        for replica in self.replicas:
            replica.reset_prefix_cache.remote()
        self.policy.forget_all()

    def generate(self, prompt: Any, sampling_params: SamplingParams | None = None,
                 request_id: str | None = None, output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Route and submit now (ValueError, QueueFullError or EngineDeadError raise here) and return the stream.

        Same contract as `AsyncLLM.generate`: call it from a coroutine; closing the iterator early aborts."""
        if output_kind not in ("delta", "cumulative", "final"):
            raise ValueError(f"output_kind must be 'delta', 'cumulative' or 'final', got {output_kind!r}")
        error = self.error
        if error is not None:
            raise error
        params = sampling_params or SamplingParams()
        text, token_ids = self.encode(prompt)
        request_id = request_id or f"req-{next(self._ids)}"
        self.engine.validate(token_ids, params)
        digests = block_digests(token_ids, self.info.block_size)
        with self._lock:
            if request_id in self._pending:
                raise ValueError(f"request_id {request_id!r} is already in use")
            if self.max_waiting_requests is not None and len(self._pending) >= self.max_waiting_requests:
                raise QueueFullError(f"{len(self._pending)} requests pending; the limit is "
                                     f"{self.max_waiting_requests}")
            try:
                index = self.policy.choose(digests, [s.alive for s in self.states])
            except RuntimeError:
                raise EngineDeadError("every replica has died") from None
            self.policy.start(index, digests)
            self.states[index].in_flight += 1
            entry = self._pending[request_id] = _Entry(index, params.n)
        stream = self.replicas[index].generate.options(num_returns="streaming").remote(
            token_ids, params, request_id, output_kind)
        # The bookkeeping ends when the replica's task does, even for a stream nobody ever iterates (an async
        # generator that never started runs no `finally`).
        stream.completed().future().add_done_callback(lambda _: self._release(request_id, entry))
        return self._iterate(request_id, entry, stream, text)

    async def score(self, prompt: Any, continuation: Any) -> ScoreOutput:
        """Log-probability of `continuation` given `prompt` (text or token ids), per token and summed, as
        `AsyncLLM.score`. Routed like any request, so scoring many continuations of one prompt goes to the
        replica that caches it. ValueError for bad input."""
        return await score_request(self, prompt, continuation)

    async def _iterate(self, request_id: str, entry: "_Entry", stream: Any, text: str | None
                       ) -> AsyncIterator[RequestOutput]:
        index = entry.index
        exceptions = self._ray.exceptions
        finished = False
        try:
            async for ref in stream:
                try:
                    out = await ref
                except exceptions.RayTaskError as exc:  # raised inside the replica: hand on the original
                    finished = True
                    raise _cause(exc) from None
                if text is not None:
                    out.prompt = text  # the replica saw token ids only
                if out.finished:
                    finished = True
                yield out
                if finished:
                    return
            finished = True
            raise EngineDeadError(f"replica {index} ended request {request_id!r} without a final output")
        except exceptions.RayActorError as exc:
            finished = True
            self._mark_dead(index, exc)
            raise EngineDeadError(f"replica {index} died while serving this request: {_first_line(exc)}") from None
        finally:
            if not finished:
                self._abort_on(index, request_id)
            self._release(request_id, entry)

    def _release(self, request_id: str, entry: "_Entry") -> None:
        """The request no longer counts against its replica's load; safe to call twice (identity-checked, so a
        late call cannot release a newer request that reuses the id)."""
        with self._lock:
            if self._pending.get(request_id) is entry:
                del self._pending[request_id]
                self.policy.finish(entry.index)
                self.states[entry.index].in_flight -= 1

    async def abort(self, request_id: str, sample_index: int | None = None) -> None:
        self.abort_nowait(request_id, sample_index)

    def abort_nowait(self, request_id: str, sample_index: int | None = None) -> None:
        entry = self._pending.get(request_id)
        if entry is not None:
            if sample_index is not None:
                check_sample_index(sample_index, entry.n)
            self._abort_on(entry.index, request_id, sample_index)

    def _abort_on(self, index: int, request_id: str, sample_index: int | None = None) -> None:
        if self.states[index].alive:
            # Fire and forget: the stream reports the abort.
            self.replicas[index].abort.remote(request_id, sample_index)

    def stats(self) -> EngineStats:
        """All replicas' counters summed (as of the last refresh, at most `health_interval` seconds old)."""
        known = [s.stats for s in self.states if s.stats is not None]
        return sum_stats(known) if known else EngineStats(*([0] * (len(fields(EngineStats)) - 1)))

    def replica_states(self) -> list[ReplicaState]:
        return list(self.states)

    def health_detail(self) -> dict:
        """The /health body: each replica's state; the server answers 200 while at least one is alive."""
        return {"healthy": sum(s.alive for s in self.states), "replicas": [
            {"index": s.index, "alive": s.alive, "in_flight": s.in_flight, "error": s.error}
            for s in self.states]}

    def metric_collectors(self) -> list:
        """Prometheus collectors for per-replica gauges (registered by the server next to its own)."""
        from plait.distributed.metrics import ReplicaCollector

        return [ReplicaCollector(self)]

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._monitor.join(timeout)
        stop_replicas(self.replicas)

    # ------------------------------------------------------------------------------------ replica health
    def refresh(self) -> None:
        """Ask every live replica for its stats now; a replica that is gone is marked dead."""
        ray = self._ray
        live = [s for s in self.states if s.alive]
        refs = [self.replicas[s.index].stats.remote() for s in live]
        for state, ref in zip(live, refs):
            try:
                state.stats = ray.get(ref, timeout=max(self.health_interval * 5, 5.0))
            except ray.exceptions.RayActorError as exc:
                self._mark_dead(state.index, exc)
            except ray.exceptions.RayTaskError as exc:  # the replica's engine loop died: it cannot serve
                self._mark_dead(state.index, _cause(exc))
            except ray.exceptions.GetTimeoutError:
                log.warning("replica %d did not answer a stats call in time", state.index)

    def _watch(self) -> None:
        while not self._stopping.wait(self.health_interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad round
                log.exception("replica health check failed")

    def _mark_dead(self, index: int, exc: BaseException) -> None:
        with self._lock:
            state = self.states[index]
            if not state.alive:
                return
            state.alive = False
            state.error = _first_line(exc)
            if state.stats is not None:  # counters stay (they are totals); what it held is gone
                state.stats = replace(state.stats, **{g: 0 for g in _GAUGES})
            self.policy.forget(index)
        log.error("replica %d is dead: %s", index, state.error)


def _cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, unwrapped from Ray's RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
