"""Token-budget continuous batching (pure Python).

Every step hands out at most `max_num_batched_tokens` tokens: first one token to each running decode, then
chunks of partially computed prompts (chunked prefill), then new requests while KV blocks and `max_num_seqs`
allow. Prefill, decode, chunked prefill, prefix-cache hits and recompute after preemption are all the same
thing: "compute these pending tokens of this request".

Samples of one n > 1 prompt fork: the first one admitted computes the prompt; the others wait, and in the step
that completes the prompt they are attached to its chunk (`fork_ids`), sample their first tokens from its last
logits row, and join the running set sharing its full KV blocks, with the partial last block copied (the copy
rides in the next step's `block_copies`). Copy-on-write: every sequence writes only into blocks of its own.
"""

from __future__ import annotations

import bisect
import time

from plait.cache.kv_manager import KVCacheManager
from plait.config import SchedulerConfig
from plait.core.request import Request, Status
from plait.core.sched_output import ModelOutput, NewRequestData, SampledToken, ScheduledChunk, SchedulerOutput


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, max_model_len: int) -> None:
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.waiting: list[Request] = []  # kept sorted by Request.sort_key
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._seen_by_runner: set[str] = set()
        self._finished_for_runner: list[str] = []
        self._forking: dict[str, Request] = {}  # n > 1 group id -> the sample computing the prompt for the rest
        self._block_copies: list[tuple[int, int]] = []  # forks' partial blocks, copied before the next forward
        self.num_forks = 0
        self.num_preemptions = 0
        self.num_prompt_tokens_computed = 0
        self.num_generated_tokens = 0

    # ----------------------------------------------------------------------------------------- requests
    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        """Refuse at submission what could never run, instead of leaving it waiting forever."""
        if prompt_len + max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) must be <= the model's context "
                f"length {self.max_model_len}")
        needed = self.kv.blocks_for(prompt_len + max_tokens - 1)  # the last sampled token never needs KV
        if needed > self.kv.num_blocks:
            raise ValueError(
                f"prompt + max_tokens ({prompt_len + max_tokens} tokens) needs {needed} KV blocks but the whole "
                f"pool has {self.kv.num_blocks} ({self.kv.num_blocks * self.kv.block_size} tokens); raise "
                f"kv_cache_memory or lower max_tokens")

    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        self.check_fits(len(request.prompt_token_ids), request.max_tokens)
        self.requests[request.request_id] = request
        bisect.insort(self.waiting, request, key=Request.sort_key)

    def abort(self, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is not None and not request.finished:
            self.finish(request, "abort")
        return request

    def finish(self, request: Request, reason: str, stop_reason: str | int | None = None) -> None:
        request.status = Status.FINISHED
        request.finish_reason, request.stop_reason = reason, stop_reason
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request.request_id)
        self._stop_forking(request)
        del self.requests[request.request_id]
        if request.request_id in self._seen_by_runner:
            self._seen_by_runner.discard(request.request_id)
            self._finished_for_runner.append(request.request_id)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ----------------------------------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_ids=self._finished_for_runner, block_copies=self._block_copies)
        self._finished_for_runner, self._block_copies = [], []
        budget = self.config.max_num_batched_tokens
        scheduled: set[str] = set()
        # Decodes (one pending token) first, then partial prefills, each in priority/arrival order.
        for request in sorted(self.running, key=lambda r: (r.num_pending > 1, r.sort_key())):
            if budget == 0:
                break
            if request.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_pending, budget)
            drafts, request.spec_token_ids = request.spec_token_ids, []
            if drafts and request.num_pending == 1 and budget > 1:
                drafts = drafts[: budget - 1]
                # Drafts ride along only where they fit: they never cause a preemption.
                if self.kv.allocate(request.request_id, request.num_computed, 1 + len(drafts)):
                    self._emit(out, request, 1 + len(drafts), drafts)
                    scheduled.add(request.request_id)
                    budget -= 1 + len(drafts)
                    continue
            while not self.kv.allocate(request.request_id, request.num_computed, num_new):
                victim = max((r for r in self.running if r.request_id not in scheduled), key=Request.sort_key)
                self._preempt(victim)
                out.num_preempted += 1
                if victim is request:
                    break
            if request.status is not Status.RUNNING:
                continue
            self._emit(out, request, num_new)
            scheduled.add(request.request_id)
            budget -= num_new

        if out.num_preempted == 0:
            self._admit(out, budget)
        if self._forking:
            self._attach_forks(out)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        index = 0
        while index < len(self.waiting) and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[index]
            if self._will_fork(request):
                index += 1  # a sibling is computing this prompt: fork from it when it completes
                continue
            tokens = request.all_token_ids
            keys = request.block_keys(self.kv.block_size) if self.kv.enable_prefix_caching else None
            prefix = self.kv.match_prefix(tokens, keys)
            if request.wants_prompt_logprobs:  # positions whose logits it wants are computed, not cached
                prefix = prefix.truncated(request.params.logits_from)
            if prefix.pending_owner is not None and prefix.pending_owner in self.requests:
                index += 1  # another request is computing this prefix now: wait, then share its blocks
                continue
            num_new = min(len(tokens) - prefix.num_tokens, budget)
            if not self.kv.allocate(request.request_id, prefix.num_tokens, num_new, prefix):
                break  # no KV memory left: later arrivals wait too (FCFS)
            self.kv.record_lookup(len(tokens), prefix)
            self.kv.announce(request.request_id, tokens, prefix, keys)
            self.waiting.pop(index)
            request.num_computed = prefix.num_tokens
            if request.num_preemptions == 0:
                request.num_cached_prompt = prefix.num_tokens
            request.status = Status.RUNNING
            if request.first_scheduled is None:
                request.first_scheduled = time.monotonic()
            self.running.append(request)
            self._emit(out, request, num_new)
            budget -= num_new
            if self._fresh_sample(request) and request.group_id not in self._forking:
                self._forking[request.group_id] = request

    # ----------------------------------------------------------------------------------------- forks
    def _fresh_sample(self, request: Request) -> bool:
        """A sample of an n > 1 prompt that has computed nothing of its own yet (so it may fork or be forked)."""
        return (self.config.fork_samples and request.params.n > 1 and request.group_id is not None
                and not request.output_token_ids and request.num_preemptions == 0)

    def _may_fork_from_sibling(self, request: Request) -> bool:
        """A fresh sample that can take a sibling's prompt KV: not one that wants prompt logprobs (those are
        computed only by running the prompt)."""
        return self._fresh_sample(request) and not request.wants_prompt_logprobs

    def _fork_parent(self, group_id: str) -> Request | None:
        parent = self._forking.get(group_id)
        if parent is not None and (parent.status is not Status.RUNNING or parent.output_token_ids):
            del self._forking[group_id]  # preempted, finished or already forked: no longer the group's source
            parent = None
        return parent

    def _stop_forking(self, request: Request) -> None:
        """`request` is no longer its group's fork source (finished, preempted, or its prompt is done)."""
        if request.group_id is not None and self._forking.get(request.group_id) is request:
            del self._forking[request.group_id]

    def _will_fork(self, request: Request) -> bool:
        return self._may_fork_from_sibling(request) and self._fork_parent(request.group_id) is not None

    def _attach_forks(self, out: SchedulerOutput) -> None:
        """Attach waiting siblings to each chunk that completes its group's prompt this step, as far as
        max_num_seqs and free blocks (one per partial last block) allow; the rest keep waiting."""
        seats, free_blocks = self.config.max_num_seqs - len(self.running), self.kv.num_free_blocks
        for chunk in out.chunks:
            request = self.requests[chunk.request_id]
            if (not chunk.sample or chunk.num_draft or request.group_id is None
                    or self._fork_parent(request.group_id) is not request):
                continue
            per_fork = self.kv.fork_blocks_needed(len(request.prompt_token_ids))
            room = min(seats, free_blocks // per_fork) if per_fork else seats
            siblings = [r for r in self.waiting
                        if r.group_id == request.group_id and self._may_fork_from_sibling(r)]
            for child in siblings[:max(room, 0)]:
                seats -= 1
                free_blocks -= per_fork
                chunk.fork_ids.append(child.request_id)
                self._introduce(out, child)  # the runner samples its first token this step

    def _apply_forks(self, parent: Request | None, chunk: ScheduledChunk, model_out: ModelOutput,
                     changed: list[tuple[Request, int]]) -> None:
        """After the parent's prompt step (`parent` None: it ended while the step ran): each attached child
        forks and takes its first token, or, when it cannot, stays waiting as if never attached."""
        for child_id in chunk.fork_ids:
            child = self.requests.get(child_id)
            if child is None:
                continue  # aborted while the step ran
            tokens = model_out.sampled.get(child_id)
            if (parent is None or not tokens
                    or self.kv.fork_blocks_needed(len(child.prompt_token_ids)) > self.kv.num_free_blocks):
                self._unfork(child_id)
            else:
                self._fork(parent, child, tokens[0], changed)

    def _fork(self, parent: Request, child: Request, token: SampledToken,
              changed: list[tuple[Request, int]]) -> None:
        """The child shares the parent's prompt KV (its partial last block copied before the next forward) and
        runs from its first token, sampled from the parent's last logits row."""
        prompt_len = len(child.prompt_token_ids)
        copy = self.kv.fork(parent.request_id, child.request_id, prompt_len)
        self.waiting.remove(child)
        child.status = Status.RUNNING
        child.num_computed = child.num_cached_prompt = prompt_len
        child.first_scheduled = time.monotonic()
        self.running.append(child)
        self.num_forks += 1
        child.output_token_ids.append(token.token_id)
        self.num_generated_tokens += 1
        changed.append((child, 1))
        stop = ("stop", None) if token.grammar_ended else self._stop(child, token.token_id)
        if stop is not None:
            self.finish(child, *stop)  # its blocks are free again: nothing to copy
        elif copy is not None:
            self._block_copies.append(copy)

    def _unfork(self, child_id: str) -> None:
        """The child stays waiting: the runner forgets the token it sampled for it (and its generator's draw),
        and gets the child's sampling data afresh when it is scheduled."""
        self._seen_by_runner.discard(child_id)
        self._finished_for_runner.append(child_id)

    def _introduce(self, out: SchedulerOutput, request: Request) -> None:
        """Hand the runner a request's sampling data the first time it is scheduled or attached as a fork."""
        if request.request_id not in self._seen_by_runner:
            self._seen_by_runner.add(request.request_id)
            out.new_requests.append(NewRequestData(request.request_id, request.prompt_token_ids, request.params,
                                                   request.seed))

    def _emit(self, out: SchedulerOutput, request: Request, num_new: int, drafts: list[int] = ()) -> None:
        """Schedule the request's next `num_new` tokens, the last len(drafts) of them draft tokens."""
        rid = request.request_id
        num_new -= len(drafts)
        self._introduce(out, request)
        start = request.num_computed
        prompt_len = len(request.prompt_token_ids)
        if start < prompt_len:
            tokens = request.prompt_token_ids[start: start + num_new]
            if len(tokens) < num_new:
                tokens = tokens + request.output_token_ids[: num_new - len(tokens)]
        else:
            tokens = request.output_token_ids[start - prompt_len: start - prompt_len + num_new]
        out.chunks.append(ScheduledChunk(
            request_id=rid, token_ids=tokens + list(drafts), start=start,
            # The KV manager's live table, not a copy (a copy per chunk per step grows with the context): nothing
            # changes an emitted request's table until the step's update.
            block_table=self.kv.block_table(rid),
            sample=start + num_new == request.num_tokens,
            prompt_logprobs=(request.wants_prompt_logprobs and start < prompt_len
                             and start + num_new > request.params.logits_from),
            num_draft=len(drafts),
        ))

    def _preempt(self, request: Request) -> None:
        """Free its KV and requeue it; it recomputes prompt + output so far and continues unchanged."""
        self.running.remove(request)
        self.kv.free(request.request_id)
        self._stop_forking(request)  # its siblings no longer wait for it: they compute the prompt themselves
        request.num_computed = 0
        request.status = Status.WAITING
        request.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, request, key=Request.sort_key)

    # ----------------------------------------------------------------------------------------- update
    def update(self, sched: SchedulerOutput, model_out: ModelOutput) -> list[tuple[Request, int]]:
        """Apply one step's results. Returns (request, number of new tokens) for each request that got tokens
        (finished ones included)."""
        changed = []
        bs = self.kv.block_size
        for chunk in sched.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None:
                if chunk.fork_ids:
                    self._apply_forks(None, chunk, model_out, changed)
                continue  # finished (aborted) while the step ran
            before = request.num_computed
            sampled = model_out.sampled[chunk.request_id] if chunk.sample else []
            # KV is valid for the chunk's tokens up to the last accepted draft; rejected drafts' slots are
            # overwritten by the next step and, lying past num_computed, never reach the prefix cache.
            accepted = max(len(sampled) - 1, 0)
            request.num_computed += len(chunk.token_ids) - chunk.num_draft + accepted
            stop, new = None, 0
            for token in sampled:
                request.output_token_ids.append(token.token_id)
                new += 1
                self.num_generated_tokens += 1
                # Structured output complete: 'stop' even on the last allowed token.
                stop = ("stop", None) if token.grammar_ended else self._stop(request, token.token_id)
                if stop is not None:
                    break  # tokens after a stop are dropped
            if stop is not None:  # stopped at an accepted draft: the tokens kept all have their KV
                request.num_computed = min(request.num_computed, request.num_tokens)
            prompt_len = len(request.prompt_token_ids)
            if before < prompt_len:
                self.num_prompt_tokens_computed += min(request.num_computed, prompt_len) - before
            if request.num_computed // bs > before // bs:
                self.kv.commit(request.request_id, request.all_token_ids, request.num_computed)
            if new:
                changed.append((request, new))
            if chunk.fork_ids:  # before the parent can finish and free the blocks its children share
                self._apply_forks(request, chunk, model_out, changed)
            if sampled:
                self._stop_forking(request)  # siblings not forked this step compute the prompt themselves
            if stop is not None:
                self.finish(request, *stop)
        return changed

    def _stop(self, request: Request, token: int) -> tuple[str, str | int | None] | None:
        """(finish reason, stop reason) when `token`, just appended, ends the request."""
        params = request.params
        num_out = len(request.output_token_ids)
        if num_out > params.min_tokens:
            if not params.ignore_eos and token in request.eos_token_ids:
                return "stop", None
            if params.stop_token_ids and token in params.stop_token_ids:
                return "stop", token
        if num_out >= request.max_tokens or request.num_tokens >= self.max_model_len:
            return "length", None
        return None
