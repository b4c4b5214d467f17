"""PDRouter: the prefill/decode split over two Ray actors, each an AsyncLLM (plait.distributed.replica).

`PDRouter(model, connector="ray" | "tcp", num_cpus_per_worker=1, **engine_config)` starts one prefill and one
decode actor (they may land on different nodes of a Ray cluster) and implements the engine-client protocol,
so `build_app(router, ...)` serves it (`plait serve --pd-split`). The KV moves through Ray's object store
("ray", works across nodes) or a socket from the prefill actor straight to the decode actor ("tcp": the decode
actor listens on its node's address). The orchestration is `PDBase`'s (client.py).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any, AsyncIterator

from plait.distributed.pd.client import KV_TIMEOUT, PDBase
from plait.distributed.pd.worker import DecodeWorker, PrefillWorker
from plait.distributed.ray_env import ensure_ray, require_ray
from plait.distributed.replica import EngineFactory, EngineReplica, replica_config, stop_replicas, validator
from plait.engine.async_llm import EngineDeadError

CONNECTORS = ("ray", "tcp")


def _make_connector(spec: tuple) -> Any:
    kind = spec[0]
    if kind == "ray":
        from plait.distributed.kv_transfer.ray_connector import RayConnector

        return RayConnector(spec[1])
    from plait.distributed.kv_transfer.tcp_connector import TcpConnector

    if kind == "tcp-send":
        return TcpConnector.connect(spec[1])
    return TcpConnector.listen(_node_ip(), 0)  # this actor's own node, so a prefill actor elsewhere reaches it


class PrefillActor(EngineReplica):
    def __init__(self, config: dict, factory: EngineFactory | None, connector: tuple | None) -> None:
        super().__init__(config, factory)
        self.worker = PrefillWorker(self.llm, _make_connector(connector) if connector else None)

    def connect(self, connector: tuple) -> None:
        self.worker.connector = _make_connector(connector)

    async def prefill(self, *args: Any) -> AsyncIterator:
        async for item in self.worker.prefill(*args):
            yield item

    def drop(self, key: str) -> None:
        self.worker.drop(key)

    def pending_transfers(self) -> int:
        return self.worker.pending_transfers()

    def bytes_moved(self) -> int:
        return self.worker.connector.bytes_sent


class DecodeActor(EngineReplica):
    def __init__(self, config: dict, factory: EngineFactory | None, connector: tuple) -> None:
        super().__init__(config, factory)
        self.worker = DecodeWorker(self.llm, _make_connector(connector))

    def kv_address(self) -> tuple[str, int]:
        return self.worker.connector.address

    async def decode(self, *args: Any) -> AsyncIterator:
        async for item in self.worker.decode(*args):
            yield item

    def drop(self, key: str) -> None:
        self.worker.drop(key)

    def pending_transfers(self) -> int:
        return self.worker.pending_transfers()

    def all_blocks_free(self) -> bool:
        return self.worker.all_blocks_free()

    def bytes_moved(self) -> int:
        return self.worker.connector.bytes_received


class RayHandle:
    """A worker actor, called like a LocalHandle (client.py)."""

    def __init__(self, actor: Any, on_dead: Any) -> None:
        self.actor = actor
        self._on_dead = on_dead

    async def stream(self, method: str, *args: Any) -> AsyncIterator:
        import ray

        refs = getattr(self.actor, method).options(num_returns="streaming").remote(*args)
        try:
            async for ref in refs:
                try:
                    yield await ref
                except ray.exceptions.RayTaskError as exc:  # raised inside the worker: hand on the original
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else exc) from None
        except ray.exceptions.RayActorError as exc:
            self._on_dead(exc)
            raise EngineDeadError(f"a worker of the prefill/decode split died: {exc}") from None

    def call(self, method: str, *args: Any) -> None:
        getattr(self.actor, method).remote(*args)  # fire and forget: the streams report what happens


class PDRouter(PDBase):
    """`PDRouter(model=None, connector="ray", num_cpus_per_worker=1, ray_address=None, max_waiting_requests=None,
    kv_timeout=120, prefill_config=None, decode_config=None, **engine_config)`.

    `prefill_config` / `decode_config` override engine settings per side (e.g. a larger token budget for the
    prefill worker); both must keep the model, dtype and block_size, and the decode side its prefix cache."""

    def __init__(self, model: str | None = None, *, connector: str = "ray", num_cpus_per_worker: int = 1,
                 ray_address: str | None = None, max_waiting_requests: int | None = None,
                 kv_timeout: float = KV_TIMEOUT, prefill_config: dict | None = None,
                 decode_config: dict | None = None, _engine_factory: EngineFactory | None = None,
                 **config: Any) -> None:
        if connector not in CONNECTORS:
            raise ValueError(f"connector must be one of {', '.join(CONNECTORS)}; got {connector!r}")
        if not isinstance(num_cpus_per_worker, (int, float)) or num_cpus_per_worker <= 0:
            raise ValueError(f"num_cpus_per_worker must be > 0, got {num_cpus_per_worker!r}")
        from plait.config import EngineConfig

        require_ray("the prefill/decode split")
        base = replica_config(dict(config, model=model), num_cpus_per_worker, offline=False)
        configs = [dict(base, **(prefill_config or {})), dict(base, **(decode_config or {}))]
        for side in configs:
            EngineConfig(**side)  # bad settings fail here, not inside an actor
        ray = ensure_ray(ray_address, "the prefill/decode split")
        self._ray = ray
        self._dead: BaseException | None = None
        self._closed = False
        self.mailbox = None
        actors = []
        try:
            if connector == "ray":
                from plait.distributed.kv_transfer.ray_connector import RayConnector

                self.mailbox = RayConnector.create(ray).mailbox
                specs = (("ray", self.mailbox), ("ray", self.mailbox))
            else:
                specs = (None, ("tcp-listen",))
            opts = dict(num_cpus=num_cpus_per_worker)
            actors.append(ray.remote(PrefillActor).options(**opts).remote(configs[0], _engine_factory, specs[0]))
            actors.append(ray.remote(DecodeActor).options(**opts).remote(configs[1], _engine_factory, specs[1]))
            infos = ray.get([a.info.remote() for a in actors])
            if connector == "tcp":
                address = ray.get(actors[1].kv_address.remote())
                ray.get(actors[0].connect.remote(("tcp-send", address)))
        except BaseException:
            for a in actors:
                ray.kill(a)
            raise
        self.actors = actors
        self.connector = connector
        p_info, d_info = infos
        if (p_info.block_size, p_info.vocab_size) != (d_info.block_size, d_info.vocab_size):
            self.shutdown()
            raise ValueError("prefill_config and decode_config must keep the model and block_size equal")
        self.info = d_info
        self.tokenizer = d_info.tokenizer
        self.engine = validator(replace(d_info, num_blocks=min(p_info.num_blocks, d_info.num_blocks),
                                        max_model_len=min(p_info.max_model_len, d_info.max_model_len)))
        self.prefill = RayHandle(actors[0], self._mark_dead)
        self.decode = RayHandle(actors[1], self._mark_dead)
        self._setup(max_waiting_requests, kv_timeout)

    def _mark_dead(self, exc: BaseException) -> None:
        self._dead = exc

    @property
    def error(self) -> BaseException | None:
        if self._closed:
            return EngineDeadError("the prefill/decode router is shut down")
        if self._dead is not None:
            return EngineDeadError(f"a worker of the prefill/decode split died: {self._dead}")
        return None

    def stats(self):
        """Both workers' engine counters summed."""
        from plait.distributed.offline import sum_stats

        return sum_stats(self._ray.get([a.stats.remote() for a in self.actors]))

    def idle(self) -> bool:
        """Tests: every KV block of both workers is free and no transfer is held on either side."""
        ray = self._ray
        free = ray.get([a.all_blocks_free.remote() for a in self.actors])
        held = ray.get([a.pending_transfers.remote() for a in self.actors])
        return all(free) and sum(held) == 0

    def bytes_moved(self) -> tuple[int, int]:
        """(bytes the prefill side sent, bytes the decode side received)."""
        return tuple(self._ray.get([a.bytes_moved.remote() for a in self.actors]))

    def reset_prefix_cache(self) -> None:
        for a in self.actors:
            a.reset_prefix_cache.remote()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        stop_replicas(self.actors)
        if self.mailbox is not None:
            self._ray.kill(self.mailbox)


def _node_ip() -> str:
    """This process's node address as Ray knows it (loopback when that fails: one host)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - no cluster address known: one host
        return socket.gethostbyname("localhost")
