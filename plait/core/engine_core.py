"""The synchronous engine core: schedule -> run -> update, and hand the frontend each request's new tokens.

No asyncio and no threads in here: the offline API drives `step()` in a loop, the async API runs the same loop
in a background thread. Text, stop strings and logprob dicts are the frontend's (plait.engine.output_processor);
when it finds a stop string it calls `finish_sample`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from plait.cache.holds import Hold
from plait.core.engine_output import EngineOutput, RawLogprobs, SampleDelta
from plait.core.request import Request
from plait.core.scheduler import Scheduler
from plait.core.sched_output import ModelOutput, SchedulerOutput
from plait.params import SamplingParams
from plait.spec.speculator import SpecStats, Speculator


class Runner(Protocol):
    def execute(self, sched: SchedulerOutput) -> ModelOutput: ...


class TokenizerLike(Protocol):
    vocab_size: int

    def decode(self, ids, skip_special_tokens: bool = True) -> str: ...

    def id_to_token_text(self, token_id: int) -> str: ...


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    prompt_tokens: int
    generated_tokens: int
    steps: int
    forks: int = 0  # n > 1 samples that took their first sibling's prompt KV instead of computing it
    spec: SpecStats | None = None  # speculative decoding's totals, when the engine speculates

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass
class _Group:
    """One caller request: n sibling sequences over one prompt."""

    request_id: str
    children: list[Request]
    prompt_len: int
    # Prompt positions whose logprobs were already sent (a preempted request recomputes them).
    prompt_logprobs_sent: int = 1
    queue_time_sent: bool = False

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.children)


def check_sample_index(sample_index: object, n: int) -> None:
    """ValueError unless `sample_index` names one of a request's n samples."""
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or not 0 <= sample_index < n:
        raise ValueError(f"sample_index must be an integer in [0, {n}) (the request has n={n} samples), "
                         f"got {sample_index!r}")


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: Runner, tokenizer: TokenizerLike,
                 eos_token_ids: list[int], vocab_size: int, speculator: Speculator | None = None) -> None:
        self.scheduler = scheduler
        self.speculator = speculator
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        self._groups: dict[str, _Group] = {}
        self._child_to_group: dict[str, _Group] = {}
        self.num_steps = 0

    # ------------------------------------------------------------------------------------ requests
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Raise ValueError for a request that cannot run; return its resolved max_tokens.
        Reads only settings, never engine state, so any thread may call it."""
        if not prompt_token_ids:
            raise ValueError("prompt must not be empty")
        if any(not isinstance(t, int) or not 0 <= t < self.vocab_size for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size})")
        max_len = self.scheduler.max_model_len
        if len(prompt_token_ids) >= max_len:
            raise ValueError(f"prompt is {len(prompt_token_ids)} tokens; the model's context length is "
                             f"{max_len}, so the prompt must be shorter than that")
        max_tokens = params.max_tokens if params.max_tokens is not None else max_len - len(prompt_token_ids)
        self.scheduler.check_fits(len(prompt_token_ids), max_tokens)
        if params.prompt_logprobs_start is not None and params.prompt_logprobs_start >= len(prompt_token_ids):
            raise ValueError(f"prompt_logprobs_start must be < the prompt's length ({len(prompt_token_ids)} "
                             f"tokens), got {params.prompt_logprobs_start}")
        if params.logit_bias and any(not 0 <= t < self.vocab_size for t in params.logit_bias):
            raise ValueError(f"logit_bias keys must be token ids in [0, {self.vocab_size})")
        if params.structured_outputs is not None:  # compiles in the caller's thread, cached for the engine's
            self.runner.prepare(params)
        return max_tokens

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Validate and queue a request; raises ValueError (and queues nothing) for bad input."""
        if request_id in self._groups:
            raise ValueError(f"request_id {request_id!r} is already in use")
        max_tokens = self.validate(prompt_token_ids, params)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        taken = [c for c in child_ids if c in self.scheduler.requests or c in self._child_to_group]
        if taken:
            raise ValueError(f"request_id {request_id!r} clashes with running request {taken[0]!r}")
        # Siblings fork from the first one after its prompt (copy-on-write, Scheduler); with fork_samples off they
        # share its prompt blocks through the prefix cache instead (pending prefixes).
        now = time.monotonic()
        children: list[Request] = []
        for i in range(params.n):
            children.append(Request(
                request_id=child_ids[i],
                prompt_token_ids=prompt_token_ids, params=params, max_tokens=max_tokens,
                eos_token_ids=self.eos_token_ids, arrival=now, group_id=request_id, sample_index=i))
        # Prompt logprobs start at position 1, or at prompt_logprobs_start (earlier positions are never computed).
        group = _Group(request_id, children, len(prompt_token_ids),
                       prompt_logprobs_sent=max(1, params.prompt_logprobs_start or 1))
        for child in children:
            self.scheduler.add(child)
            self._child_to_group[child.request_id] = group
        self._groups[request_id] = group

    def abort(self, request_id: str, sample_index: int | None = None) -> EngineOutput | None:
        """Stop a request now; its KV is freed at once. Returns its output (finish_reason 'abort' for the samples
        that were still running), or None for an unknown or finished request.

        sample_index: abort only that sample of an n > 1 request (ValueError outside [0, n)); its siblings go
        on and the request finishes when they all have. None for a sample that had already ended."""
        group = self._groups.get(request_id)
        if group is None:
            return None
        children = group.children
        if sample_index is not None:
            check_sample_index(sample_index, len(children))
            children = [children[sample_index]]
            if children[0].finished:
                return None
        deltas = []
        for child in children:
            if not child.finished:
                self.scheduler.abort(child.request_id)
                deltas.append(SampleDelta(child.sample_index, [], finish_reason="abort"))
        return self._output(group, deltas, [])

    def finish_sample(self, request_id: str, index: int, stop_reason: str) -> None:
        """The frontend found a stop string in sample `index`: end it with 'stop' now (frees its KV). Unknown or
        already finished samples are ignored: the engine may have ended it meanwhile."""
        group = self._groups.get(request_id)
        if group is None or not 0 <= index < len(group.children):
            return
        child = group.children[index]
        if not child.finished:
            self.scheduler.finish(child, "stop", stop_reason)
        if group.finished:
            self._forget(group)

    def has_unfinished(self) -> bool:
        return bool(self._groups)

    def request_ids(self) -> list[str]:
        """Ids of the requests the engine still holds."""
        return list(self._groups)

    # ------------------------------------------------------------------------------------ the loop
    def step(self) -> list[EngineOutput]:
        """One forward pass for everything scheduled; returns the news of each request that changed."""
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        sched = self.scheduler.schedule()
        if self.speculator is not None:
            for rid in sched.finished_ids:
                self.speculator.drop(rid)
        if sched.empty:
            # Nothing can run; still hand the runner the finished ids so its per-request state is dropped.
            if sched.finished_ids:
                self.runner.execute(sched)
            return []
        started = time.perf_counter()
        model_out = self.runner.execute(sched)
        self.num_steps += 1
        if self.speculator is not None:
            passes = max((c.num_draft for c in sched.chunks), default=0) if model_out.draft_seconds else 0
            decode_only = all(len(c.token_ids) - c.num_draft == 1 for c in sched.chunks)
            self.speculator.observe_step(sched.num_tokens, time.perf_counter() - started - model_out.draft_seconds,
                                         model_out.draft_seconds, passes, decode_only)
            for chunk in sched.chunks:
                if chunk.num_draft and chunk.request_id in model_out.sampled:
                    self.speculator.observe(chunk.request_id, chunk.num_draft,
                                            len(model_out.sampled[chunk.request_id]) - 1)
        deltas: dict[str, list[SampleDelta]] = {}
        prompt_lps: dict[str, list[tuple[int, RawLogprobs]]] = {}
        for rid, (start, entries) in model_out.prompt_logprobs.items():
            group = self._child_to_group.get(rid)
            if group is not None:
                fresh = self._fresh_prompt_logprobs(group, start, entries)
                if fresh:
                    prompt_lps.setdefault(group.request_id, []).extend(fresh)
                    deltas.setdefault(group.request_id, [])
        for child, num_new in self.scheduler.update(sched, model_out):
            group = self._child_to_group[child.request_id]
            sampled = model_out.sampled[child.request_id][:num_new]
            logprobs = [t.logprobs for t in sampled] if sampled[0].logprobs is not None else None
            deltas.setdefault(group.request_id, []).append(SampleDelta(
                child.sample_index, child.output_token_ids[-num_new:], logprobs,
                child.finish_reason, child.stop_reason))
        return [self._output(self._groups[rid], samples, prompt_lps.get(rid, []))
                for rid, samples in deltas.items()]

    def _fresh_prompt_logprobs(self, group: _Group, start: int, entries) -> list[tuple[int, RawLogprobs]]:
        """Entry j is the logprob of prompt token start + 1 + j. Positions already sent (recomputed after a
        preemption) are skipped, so each position reaches the frontend once and in order."""
        fresh = []
        for j, entry in enumerate(entries):
            position = start + 1 + j
            if position == group.prompt_logprobs_sent and position < group.prompt_len:
                fresh.append((position, entry))
                group.prompt_logprobs_sent += 1
        return fresh

    def _output(self, group: _Group, samples: list[SampleDelta], prompt_logprobs) -> EngineOutput:
        finished = group.finished
        queue_time = None
        first_scheduled = group.children[0].first_scheduled
        if first_scheduled is not None and not group.queue_time_sent:
            queue_time = first_scheduled - group.children[0].arrival
            group.queue_time_sent = True
        if finished:
            self._forget(group)
        return EngineOutput(group.request_id, samples, finished, prompt_logprobs,
                            group.children[0].num_cached_prompt, queue_time)

    def _forget(self, group: _Group) -> None:
        self._groups.pop(group.request_id, None)
        for child in group.children:
            self._child_to_group.pop(child.request_id, None)

    def reset_prefix_cache(self) -> None:
        """No later request reuses KV computed before this call (running requests keep their own KV)."""
        self.scheduler.kv.reset_prefix_cache()

    # ------------------------------------------------------------------------------------ prefix holds
    def hold_prefix(self, prompt_token_ids: list[int]) -> Hold:
        """Pin the cached full blocks of a prefix until `release_prefix` (plait/cache/holds.py). Computes
        nothing: the frontend (plait/engine/prefix_hold.py) runs what is missing and pins again. ValueError past
        the holds' bounds or with the prefix cache off.

        Holds leave room for the longest request the engine accepts (check_fits: up to max_model_len - 1 tokens of
        KV, or the whole pool), so no admissible request can wait forever behind them."""
        kv = self.scheduler.kv
        longest = min(kv.num_blocks, kv.blocks_for(self.scheduler.max_model_len - 1))
        return kv.hold_prefix(prompt_token_ids, keep_free=longest)

    def release_prefix(self, hold_id: int) -> bool:
        """Unpin a hold; False if it was already gone (released, or dropped by reset_prefix_cache)."""
        return self.scheduler.kv.release_hold(hold_id)

    # ------------------------------------------------------------------------------------ stats
    def stats(self) -> EngineStats:
        kv = self.scheduler.kv
        return EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            kv_blocks_used=kv.num_blocks - kv.num_free_blocks, kv_blocks_total=kv.num_blocks,
            prefix_cache_queries=kv.prefix_queries, prefix_cache_hits=kv.prefix_hits,
            preemptions=self.scheduler.num_preemptions,
            prompt_tokens=self.scheduler.num_prompt_tokens_computed,
            generated_tokens=self.scheduler.num_generated_tokens, steps=self.num_steps,
            forks=self.scheduler.num_forks,
            spec=None if self.speculator is None else self.speculator.stats)
