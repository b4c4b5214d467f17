"""One engine replica: an `AsyncLLM` inside a Ray actor, and how to start N of them.

The actor is an async Ray actor: its methods run on one event loop in the actor process, so many requests
stream at once while the engine thread steps them in shared batches, exactly as in a local `AsyncLLM`. Prompts
arrive as token ids (the router or driver tokenized them already, to place them by prefix) and outputs leave
as `RequestOutput`s, which pickle as plain dataclasses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from plait.config import OFFLINE_TOKEN_BUDGET
from plait.outputs import RequestOutput
from plait.params import SamplingParams

# (EngineConfig) -> BuiltEngine: how tests put a tiny random model into the replicas; None loads config.model.
EngineFactory = Callable[[Any], Any]


@dataclass
class ReplicaInfo:
    """What the driver needs to know about a replica's engine (equal across replicas of one model)."""

    tokenizer: Any
    vocab_size: int
    max_model_len: int
    num_blocks: int
    block_size: int
    eos_token_ids: list[int]
    describe: str


class EngineReplica:
    """The actor body. Not used directly: `start_replicas` wraps it with `ray.remote`."""

    def __init__(self, config: dict, factory: EngineFactory | None = None,
                 max_waiting_requests: int | None = None) -> None:
        from plait.config import EngineConfig
        from plait.engine.async_llm import AsyncLLM
        from plait.engine.builder import describe

        prebuilt = factory(EngineConfig(**config)) if factory is not None else None
        self.llm = AsyncLLM(_prebuilt=prebuilt, max_waiting_requests=max_waiting_requests, **config)
        self._describe = describe(self.llm._built)

    def info(self) -> ReplicaInfo:
        core = self.llm.engine
        kv = core.scheduler.kv
        return ReplicaInfo(self.llm.tokenizer, core.vocab_size, core.scheduler.max_model_len, kv.num_blocks,
                           kv.block_size, sorted(core.eos_token_ids), self._describe)

    async def generate(self, token_ids: list[int], params: SamplingParams, request_id: str,
                       output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs (call with `num_returns="streaming"`). Errors reach the caller."""
        async for out in self.llm.generate(token_ids, params, request_id=request_id, output_kind=output_kind):
            yield out

    async def generate_batch(self, items: list[tuple[str, list[int], SamplingParams]]) -> list[RequestOutput]:
        """Run a share of an offline batch; all requests are queued at once so they batch together."""
        async def one(request_id: str, token_ids: list[int], params: SamplingParams) -> RequestOutput:
            final = None
            async for out in self.llm.generate(token_ids, params, request_id=request_id, output_kind="final"):
                final = out
            return final

        return list(await asyncio.gather(*(one(*item) for item in items)))

    async def abort(self, request_id: str, sample_index: int | None = None) -> None:
        self.llm.abort_nowait(request_id, sample_index)

    def stats(self) -> Any:
        return self.llm.stats()

    def all_blocks_free(self) -> bool:
        """True when no KV block is held (tests check the pool is full again after every workload)."""
        return self.llm.engine.scheduler.kv.all_blocks_free()

    def ping(self) -> bool:
        return self.llm.is_running

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def shutdown(self) -> None:
        self.llm.shutdown()


def replica_config(config: dict, num_cpus: int, offline: bool) -> dict:
    """Engine settings for one replica: torch gets the replica's CPUs as threads (unless told otherwise), so
    replicas do not oversubscribe the cores Ray gave them; offline shares use the offline token budget."""
    config = dict(config)
    if config.get("num_threads") is None:
        config["num_threads"] = num_cpus
    if offline and config.get("max_num_batched_tokens") is None:
        config["max_num_batched_tokens"] = OFFLINE_TOKEN_BUDGET
    return config


def start_replicas(n: int, config: dict, *, num_cpus: int = 1, factory: EngineFactory | None = None,
                   max_waiting_requests: int | None = None, address: str | None = None,
                   feature: str = "data parallelism") -> tuple[list[Any], list[ReplicaInfo]]:
    """Start `n` replica actors (each reserving `num_cpus` Ray CPUs) and wait until all have loaded the model."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"data_parallel_size must be an integer >= 1, got {n!r}")
    if not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
        raise ValueError(f"num_cpus_per_replica must be > 0, got {num_cpus!r}")
    from plait.config import EngineConfig
    from plait.distributed.ray_env import ensure_ray

    EngineConfig(**config)  # bad settings fail here, not inside N actors
    ray = ensure_ray(address, feature)
    actor_cls = ray.remote(EngineReplica).options(num_cpus=num_cpus)
    actors = [actor_cls.remote(config, factory, max_waiting_requests) for _ in range(n)]
    try:
        infos = ray.get([a.info.remote() for a in actors])
    except BaseException:
        for a in actors:
            ray.kill(a)
        raise
    return actors, infos


def stop_replicas(actors: list[Any]) -> None:
    """Stop the engine threads, then the actors; a replica that already died is skipped."""
    import ray

    for a in actors:
        try:
            ray.get(a.shutdown.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - dead or stuck: killed below either way
            pass
        ray.kill(a)


def validator(info: ReplicaInfo) -> Any:
    """An engine core that never steps, sized like a replica's: its `validate` makes the replica's own
    submission checks (token range, context length, KV pool size) in the driver, so bad input fails at once
    with the same ValueError a local engine raises. Pure Python: no weights, no torch tensors."""
    from plait.cache.kv_manager import KVCacheManager
    from plait.config import SchedulerConfig
    from plait.core.engine_core import EngineCore
    from plait.core.scheduler import Scheduler

    kv = KVCacheManager(info.num_blocks, info.block_size, enable_prefix_caching=False)
    scheduler = Scheduler(SchedulerConfig(), kv, info.max_model_len)
    return EngineCore(scheduler, None, info.tokenizer, info.eos_token_ids, info.vocab_size)
