"""The synchronous engine core: schedule -> run -> update, then detokenize and apply stop strings.

No asyncio and no threads in here: the offline API drives `step()` in a loop, the async API runs the same loop
in a background thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from plait.core.detokenizer import IncrementalDetokenizer
from plait.core.request import Request
from plait.core.scheduler import Scheduler
from plait.core.sched_output import ModelOutput, SchedulerOutput
from plait.outputs import CompletionOutput, Logprob, RequestOutput
from plait.params import SamplingParams


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

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass
class _Group:
    """One caller request: n sibling sequences over one prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    detokenizers: list[IncrementalDetokenizer]
    completions: list[CompletionOutput]
    arrival: float
    prompt_logprobs: list | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.completions)


class EngineCore:
    def __init__(self, scheduler: Scheduler, runner: Runner, tokenizer: TokenizerLike,
                 eos_token_ids: list[int], vocab_size: int) -> None:
        self.scheduler = scheduler
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
        return max_tokens

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        """Validate and queue a request; raises ValueError (and queues nothing) for bad input."""
        if request_id in self._groups:
            raise ValueError(f"request_id {request_id!r} is already in use")
        max_tokens = self.validate(prompt_token_ids, params)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        taken = [c for c in child_ids if c in self.scheduler.requests or c in self._child_to_group]
        if taken:
            raise ValueError(f"request_id {request_id!r} clashes with running request {taken[0]!r}")
        # Siblings wait for the first one's prompt only when the prefix cache lets them share its blocks.
        share_prompt = self.scheduler.kv.enable_prefix_caching
        now = time.monotonic()
        children, detoks, completions = [], [], []
        for i in range(params.n):
            child = Request(
                request_id=child_ids[i],
                prompt_token_ids=prompt_token_ids, params=params, max_tokens=max_tokens,
                eos_token_ids=self.eos_token_ids, arrival=now, group_id=request_id, sample_index=i,
                wait_for=children[0] if children and share_prompt else None)
            children.append(child)
            detoks.append(IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.stop_strings,
                                                 params.include_stop_str_in_output, params.skip_special_tokens))
            completions.append(CompletionOutput(i, "", [], logprobs=[] if params.logprobs is not None else None,
                                                cumulative_logprob=0.0 if params.logprobs is not None else None))
        group = _Group(request_id, prompt, prompt_token_ids, params, children, detoks, completions, now)
        for child in children:
            self.scheduler.add(child)
            self._child_to_group[child.request_id] = group
        self._groups[request_id] = group

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its KV is freed at once. Returns its final output (finish_reason 'abort')."""
        group = self._groups.get(request_id)
        if group is None:
            return None
        for child, completion in zip(group.children, group.completions):
            if not completion.finished:
                self.scheduler.abort(child.request_id)
                completion.finish_reason = "abort"
        return self._emit(group)

    def has_unfinished(self) -> bool:
        return bool(self._groups)

    # ------------------------------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        """One forward pass for everything scheduled; returns an output for each request that changed."""
        sched = self.scheduler.schedule()
        if sched.empty:
            # Nothing can run; still hand the runner the finished ids so its per-request state is dropped.
            if sched.finished_ids:
                self.runner.execute(sched)
            return []
        model_out = self.runner.execute(sched)
        self.num_steps += 1
        changed_groups: dict[str, _Group] = {}
        for rid, (start, entries) in model_out.prompt_logprobs.items():
            group = self._child_to_group.get(rid)
            if group is not None:
                self._record_prompt_logprobs(group, start, entries)
        for child in self.scheduler.update(sched, model_out):
            group = self._child_to_group[child.request_id]
            self._apply_token(group, child, model_out.sampled[child.request_id].logprobs)
            changed_groups[group.request_id] = group
        return [self._emit(group) for group in changed_groups.values()]

    def _apply_token(self, group: _Group, child: Request, logprobs) -> None:
        now = time.monotonic()
        group.metrics.setdefault("first_token_time", now - group.arrival)
        completion = group.completions[child.sample_index]
        token = child.output_token_ids[-1]
        completion.token_ids.append(token)
        if logprobs is not None and completion.logprobs is not None:
            completion.logprobs.append({tid: Logprob(lp, rank, self.tokenizer.id_to_token_text(tid))
                                        for tid, lp, rank in logprobs})
            completion.cumulative_logprob += logprobs[0][1]
        stop = group.detokenizers[child.sample_index].add(token, stop_allowed=len(completion.token_ids) >
                                                          group.params.min_tokens)
        if stop is not None:
            if not child.finished:
                self.scheduler.finish(child, "stop", stop)
            elif child.finish_reason == "length":
                child.finish_reason, child.stop_reason = "stop", stop  # the last allowed token ended a stop string
        if child.finished:
            completion.finish_reason, completion.stop_reason = child.finish_reason, child.stop_reason

    def _record_prompt_logprobs(self, group: _Group, start: int, entries) -> None:
        """Entry j is the logprob of prompt token start + 1 + j. Positions already recorded (recomputed after a
        preemption) are skipped, so the list stays aligned with the prompt."""
        if group.prompt_logprobs is None:  # positions before prompt_logprobs_start stay None
            group.prompt_logprobs = [None] * max(1, group.params.prompt_logprobs_start or 1)
        decode = self.tokenizer.id_to_token_text
        for j, entry in enumerate(entries):
            position = start + 1 + j
            if position == len(group.prompt_logprobs) and position < len(group.prompt_token_ids):
                group.prompt_logprobs.append({tid: Logprob(lp, rank, decode(tid)) for tid, lp, rank in entry})

    def _emit(self, group: _Group) -> RequestOutput:
        finished = group.finished
        outputs = []
        for completion, detok in zip(group.completions, group.detokenizers):
            outputs.append(CompletionOutput(
                index=completion.index, text=detok.emittable(completion.finished),
                token_ids=list(completion.token_ids), finish_reason=completion.finish_reason,
                stop_reason=completion.stop_reason,
                logprobs=None if completion.logprobs is None else list(completion.logprobs),
                cumulative_logprob=completion.cumulative_logprob))
        first_scheduled = group.children[0].first_scheduled
        if first_scheduled is not None:
            group.metrics["queue_time"] = first_scheduled - group.arrival
        if finished:
            group.metrics["e2e_time"] = time.monotonic() - group.arrival
            del self._groups[group.request_id]
            for child in group.children:
                self._child_to_group.pop(child.request_id, None)
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
            outputs=outputs, finished=finished, prompt_logprobs=group.prompt_logprobs,
            num_cached_tokens=group.children[0].num_cached_prompt, metrics=dict(group.metrics))

    # ------------------------------------------------------------------------------------ stats
    def stats(self) -> EngineStats:
        kv = self.scheduler.kv
        return EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            kv_blocks_used=kv.num_blocks - kv.num_free_blocks, kv_blocks_total=kv.num_blocks,
            prefix_cache_queries=kv.prefix_queries, prefix_cache_hits=kv.prefix_hits,
            preemptions=self.scheduler.num_preemptions,
            prompt_tokens=self.scheduler.num_prompt_tokens_computed,
            generated_tokens=self.scheduler.num_generated_tokens, steps=self.num_steps)
