"""Holding a prefix resident: `LLM.hold_prefix`, `await AsyncLLM.hold_prefix`, `BackgroundLLM.hold_prefix`.

A search that branches from the same prefix again and again (particles, step search, tree search) wants that
prefix to stay in the KV cache between its rounds, whatever else the engine runs meanwhile. Holding it computes
the prefix if it is not cached (one request with max_tokens=1), then pins its full KV blocks (plait/cache/holds.py)
until the handle is released; every request that starts with the prefix hits them meanwhile.

- Only full blocks are held: `handle.num_tokens` is the prefix's length rounded down to the block size.
- Holds are bounded (half the KV pool, 1024 holds); past that `hold_prefix` raises ValueError.
- `reset_prefix_cache` drops every hold (nothing computed before a reset may be hit later, so a pin would only
  keep memory from use); releasing such a handle afterwards does nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable

from plait.cache.holds import Hold
from plait.engine.prompts import encode_prompt
from plait.params import SamplingParams

# Computes a prefix's KV (and one throwaway token: the engine always samples after a prompt).
COMPUTE = SamplingParams(max_tokens=1, temperature=0)
# How often AsyncLLM recomputes a prefix that other requests evicted between its computation and the pin.
ATTEMPTS = 3


class PrefixHandle:
    """A held prefix. `release()` (idempotent) makes its blocks evictable again; usable as a context manager,
    sync or async."""

    def __init__(self, hold: Hold, token_ids: list[int], release: Callable[[int], Any]) -> None:
        self.hold_id = hold.hold_id
        self.token_ids = token_ids
        self.num_tokens = hold.num_tokens  # leading tokens whose KV stays resident
        self._release = release
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release(self.hold_id)

    def __enter__(self) -> "PrefixHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> "PrefixHandle":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"PrefixHandle(hold_id={self.hold_id}, num_tokens={self.num_tokens}, {state})"


def _not_resident(attempts: int) -> RuntimeError:
    return RuntimeError(f"the prefix was evicted again before it could be held ({attempts} attempts): the KV "
                        f"pool is too busy; retry later or raise kv_cache_memory")


def hold_prefix_offline(llm: Any, prompt: Any) -> PrefixHandle:
    """LLM.hold_prefix: nothing else runs between computing and pinning, so one computation suffices."""
    _, ids = encode_prompt(llm.tokenizer, prompt)
    core = llm.engine
    core.validate(ids, COMPUTE)
    hold = core.hold_prefix(ids)
    if not hold.complete:
        partial = hold
        try:
            llm.generate([ids], COMPUTE, use_tqdm=False)  # the partial pin stays: the request hits those blocks
            hold = core.hold_prefix(ids)  # may pass the bounds now that the whole prefix is cached
        finally:
            core.release_prefix(partial.hold_id)
        if not hold.complete:
            core.release_prefix(hold.hold_id)
            raise _not_resident(1)
    return PrefixHandle(hold, ids, core.release_prefix)


async def hold_prefix_async(async_llm: Any, prompt: Any) -> PrefixHandle:
    """AsyncLLM.hold_prefix: pins run in the engine thread between steps; other requests may evict a freshly
    computed prefix before the pin lands, so it is computed again, at most ATTEMPTS times."""
    _, ids = async_llm.encode(prompt)
    core = async_llm.engine
    core.validate(ids, COMPUTE)

    def release(hold_id: int) -> None:
        try:
            async_llm.call_in_engine(core.release_prefix, hold_id)
        except RuntimeError:  # EngineDeadError: a dead or shut-down engine has no pool left to return blocks to
            pass

    held: Hold | None = None
    try:
        for _ in range(ATTEMPTS):
            hold = await _pin(async_llm, core, ids, release)
            if held is not None:
                release(held.hold_id)
            held = hold
            if hold.complete:
                return PrefixHandle(hold, ids, release)
            async for _ in async_llm.generate(ids, COMPUTE, output_kind="final"):
                pass
    except BaseException:
        if held is not None:
            release(held.hold_id)
        raise
    release(held.hold_id)
    raise _not_resident(ATTEMPTS)


async def _pin(async_llm: Any, core: Any, ids: list[int], release: Callable[[int], None]) -> Hold:
    future: concurrent.futures.Future = async_llm.call_in_engine(core.hold_prefix, ids)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        # The engine thread may pin after the caller gave up: release that hold when it lands.
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() is not None else release(f.result().hold_id))
        raise
