"""Admin routes: weight updates with versions over HTTP, and the current version in /metrics.

`POST /v1/admin/update_weights` {path, version, mode} and `GET /v1/admin/weight_version`. Both are refused (403)
unless the server has an API key, and the key middleware (app.py) answers 401 to a request without it: swapping
a model's weights is never open to anonymous callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Iterator, Literal, Union

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from plait.server.errors import APIError, bad_request


class UpdateWeightsRequest(BaseModel):
    path: str = Field(description="a safetensors directory or a GGUF file the server can read")
    version: Union[int, str] = Field(description="tag carried by every output computed with these weights")
    mode: Literal["abort", "drain", "continue"] = "drain"


class _WeightCollector(Collector):
    def __init__(self, engine, model_name: str) -> None:
        self.engine, self.model_name = engine, model_name
        self.updates = 0
        self.last_seconds = 0.0

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("plait:weight_version", "The weights steps run on now ('' as loaded).",
                                labels=["model_name"])
        version = getattr(self.engine, "weight_version", None)
        info.add_metric([self.model_name], {"version": "" if version is None else str(version)})
        yield info
        g = GaugeMetricFamily("plait:weight_updates", "Weight updates applied since start.", labels=["model_name"])
        g.add_metric([self.model_name], self.updates)
        yield g
        g = GaugeMetricFamily("plait:weight_update_last_seconds", "Seconds the last update took (load + swap).",
                              labels=["model_name"])
        g.add_metric([self.model_name], self.last_seconds)
        yield g


def install_admin_routes(app: FastAPI, ctx: Any, api_key: str | None) -> None:
    """Add the admin routes to `app` and the weight-version metrics to `ctx.metrics`' registry."""
    engine = ctx.engine
    collector = _WeightCollector(engine, ctx.model_name)
    ctx.metrics.registry.register(collector)

    def check_enabled() -> None:
        if not api_key:
            raise APIError(403, "admin routes need the server to run with an API key (--api-key)",
                           type="permission_error", code="admin_disabled")
        if not hasattr(engine, "update_weights_nowait"):
            raise APIError(501, "this engine cannot update its weights", type="server_error")

    # Not in the public OpenAPI schema: an operator surface, not part of the OpenAI-compatible API.
    @app.get("/v1/admin/weight_version", include_in_schema=False)
    async def weight_version() -> dict:
        check_enabled()
        return {"weight_version": engine.weight_version}

    @app.post("/v1/admin/update_weights", include_in_schema=False)
    async def update_weights(body: UpdateWeightsRequest) -> dict:
        check_enabled()
        try:
            # Reading and checking the file happens off the event loop; the swap itself in the engine thread.
            future = await asyncio.to_thread(engine.update_weights_nowait, body.path, body.version, body.mode)
        except ValueError as exc:
            raise bad_request(str(exc), "path") from None
        info = await asyncio.wrap_future(future)
        collector.updates += 1
        collector.last_seconds = info.prepare_seconds + info.swap_seconds
        return {"weight_version": info.version, **dataclasses.asdict(info)}
