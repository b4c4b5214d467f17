"""Runs one scheduled step: packed forward over the KV cache, then batched sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plait.core.sched_output import ModelOutput, NewRequestData, SampledToken, ScheduledChunk, SchedulerOutput
from plait.params import SamplingParams
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import build_input_batch
from plait.runner.native import Kernels
from plait.runner.shared_prefix import MIN_SHARED_BLOCKS
from plait.sampling import Sampler, SamplingBatch
from plait.sampling.sampler import GREEDY_EPS
from plait.sampling.penalties import PenaltyState
from plait.sampling.rejection import accepted_greedy, verify_sampled
from plait.sampling.structured import StructuredState
from plait.sampling.structured_compiler import GrammarCompiler
from plait.spec.model_drafter import ModelDrafter


# Prompt positions whose logits are computed at once for prompt_logprobs (bounds the [rows, vocab] buffer).
_PROMPT_LOGITS_ROWS = 256


@dataclass
class _SamplingState:
    """What the runner remembers per request to sample it: its generator survives preemption."""

    params: SamplingParams
    prompt_token_ids: list[int]
    generator: torch.Generator | None
    output_token_ids: list[int] = field(default_factory=list)
    penalties: PenaltyState | None = None  # incremental seen / count index when the request uses penalties


def _greedy(params: SamplingParams) -> bool:
    return params.temperature < GREEDY_EPS


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: KVCache, eos_token_ids: list[int],
                 device: torch.device | str = "cpu", kernels: Kernels | None = None,
                 grammars: GrammarCompiler | None = None, shared_prefix_attention: bool = True,
                 shared_prefix_min_blocks: int = MIN_SHARED_BLOCKS) -> None:
        """`kernels`: plait's C kernels (CPU only), used for attention when given; `grammars`: compiles
        structured_outputs (requests that ask for one are rejected without it); `shared_prefix_attention`:
        decodes sharing at least `shared_prefix_min_blocks` leading KV blocks attend to them as one group
        (runner/shared_prefix.py)."""
        self.shared_prefix_attention = shared_prefix_attention
        self.shared_prefix_min_blocks = shared_prefix_min_blocks
        self.model = model
        self.kernels = kernels
        self.cache = cache
        self.device = torch.device(device)
        self.eos_token_ids = list(eos_token_ids)
        self.sampler = Sampler()
        cfg = model.config
        self._heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self._states: dict[str, _SamplingState] = {}
        self.structured = StructuredState(grammars) if grammars is not None else None
        self.drafter: ModelDrafter | None = None  # early_exit / draft_model speculation (spec/model_drafter.py)

    def prepare(self, params: SamplingParams) -> None:
        """Compile a request's grammar before it is queued (called from the submitting thread, not the engine's);
        raises ValueError for a bad one."""
        if self.structured is None:
            raise ValueError("structured_outputs is not available: this engine was built without a tokenizer")
        self.structured.prepare(params)

    def _register(self, new: NewRequestData) -> None:
        generator = None
        if new.seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(new.seed)
        penalties = (PenaltyState(new.prompt_token_ids, self.model.config.vocab_size) if new.params.uses_penalties
                     else None)
        self._states[new.request_id] = _SamplingState(new.params, new.prompt_token_ids, generator,
                                                      penalties=penalties)
        if self.structured is not None:
            self.structured.register(new.request_id, new.params)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelOutput:
        for rid in sched.finished_ids:
            self._states.pop(rid, None)
            if self.structured is not None:
                self.structured.drop(rid)
        for new in sched.new_requests:
            self._register(new)
        if sched.block_copies:  # forks' partial blocks, before anything writes into them (copy-on-write)
            self.cache.copy_blocks(sched.block_copies)
            if self.drafter is not None and self.drafter.cache is not self.cache:
                self.drafter.cache.copy_blocks(sched.block_copies)
        out = ModelOutput()
        if not sched.chunks:
            return out
        if self.drafter is not None:  # model-based drafts fill the chunks' draft slots first
            out.draft_seconds = self.drafter.draft(sched.chunks, self.device)
        batch = build_input_batch(sched.chunks, self.cache.block_size, self.device, self.cache.tensor.dtype,
                                  attention_kernel=self.kernels is not None,
                                  shared_prefix=self.shared_prefix_attention,
                                  shared_prefix_min_blocks=self.shared_prefix_min_blocks)
        attention = PagedAttention(self.cache, batch.attention, *self._heads, kernels=self.kernels)
        hidden = self.model(batch.input_ids, batch.positions, attention)
        if self.drafter is not None:
            self.drafter.sync(batch)

        # Logits rows to sample from: one per sampling chunk, or for a chunk with drafts one per draft + 1 (the
        # position before each draft predicts it; the last predicts the token after them all).
        sample_rows: list[int] = []
        sampled_chunks: list[tuple[ScheduledChunk, int]] = []  # (chunk, its first row in sample_rows)
        for chunk, offset in zip(batch.chunks, batch.offsets):
            if chunk.sample:
                last = offset + len(chunk.token_ids) - 1
                sampled_chunks.append((chunk, len(sample_rows)))
                sample_rows.extend(range(last - chunk.num_draft, last + 1))
                for child in chunk.fork_ids:  # forked samples draw their first token from the same position
                    sampled_chunks.append((ScheduledChunk(child, chunk.token_ids, chunk.start, [], True),
                                           len(sample_rows)))
                    sample_rows.append(last)
            if chunk.prompt_logprobs:
                self._prompt_logprobs(out, chunk, hidden[offset: offset + len(chunk.token_ids)])
        if not sample_rows:
            return out
        rows = torch.tensor(sample_rows, device=self.device)
        logits = self.model.compute_logits(hidden[rows]).float()
        # Greedy drafts are verified by the same batched sampler call as plain rows (argmax per row); sampled
        # drafts go through the rejection rule one request at a time (sampling/rejection.py).
        plain = [(c, r) for c, r in sampled_chunks if not c.num_draft or _greedy(self._states[c.request_id].params)]
        if plain:
            self._sample_plain(out, logits, plain)
        for chunk, row in sampled_chunks:
            if chunk.num_draft and not _greedy(self._states[chunk.request_id].params):
                self._verify_sampled(out, logits[row: row + chunk.num_draft + 1], chunk)
        return out

    def _sample_plain(self, out: ModelOutput, logits: torch.Tensor,
                      chunks: list[tuple[ScheduledChunk, int]]) -> None:
        """Sample one token per row in one batched call; a chunk with (greedy) drafts contributes a row per
        drafted position, each seeing the outputs before it (min_tokens), and keeps its accepted run."""
        rows, row_ids, row_outputs = [], [], []
        for chunk, first in chunks:
            state = self._states[chunk.request_id]
            drafts = chunk.token_ids[len(chunk.token_ids) - chunk.num_draft:]
            for i in range(chunk.num_draft + 1):
                rows.append(first + i)
                row_ids.append(chunk.request_id)
                row_outputs.append(state.output_token_ids + drafts[:i] if i else state.output_token_ids)
        if len(rows) < logits.shape[0]:
            logits = logits[torch.tensor(rows, device=logits.device)]
        states = [self._states[rid] for rid in row_ids]
        structured = self.structured if self.structured and self.structured.constrained(row_ids) else None
        result = self.sampler(logits, SamplingBatch(
            params=[s.params for s in states],
            generators=[s.generator for s in states],
            output_token_ids=row_outputs,
            prompt_token_ids=[s.prompt_token_ids for s in states],
            eos_token_ids=self.eos_token_ids,
            allowed=structured.masks(row_ids, logits.shape[1], logits.device) if structured else None,
            penalty_states=[s.penalties for s in states],
        ))
        ended = structured.advance(row_ids, result.token_ids) if structured else ()
        row = 0
        for chunk, _ in chunks:
            rid, n = chunk.request_id, chunk.num_draft + 1
            targets = result.token_ids[row: row + n]
            keep = accepted_greedy(targets, chunk.token_ids[len(chunk.token_ids) - chunk.num_draft:]) + 1
            self._accept(out, rid, [SampledToken(t, lp, grammar_ended=rid in ended) for t, lp in
                                    zip(targets[:keep], result.logprobs[row: row + keep])])
            row += n

    def _verify_sampled(self, out: ModelOutput, logits: torch.Tensor, chunk: ScheduledChunk) -> None:
        """The rejection rule for one request's drafts over its k + 1 logits rows (sampling/rejection.py)."""
        state = self._states[chunk.request_id]
        drafts = chunk.token_ids[len(chunk.token_ids) - chunk.num_draft:]
        tokens = verify_sampled(self.sampler, logits, drafts, state.params, state.generator,
                                state.output_token_ids, state.prompt_token_ids, self.eos_token_ids)
        logprobs: list = [None] * len(tokens)
        if state.params.logprobs is not None:
            logprobs = self.sampler.top_logprobs(logits[: len(tokens)], torch.tensor(tokens),
                                                 state.params.logprobs).to_lists()
        self._accept(out, chunk.request_id, [SampledToken(t, lp) for t, lp in zip(tokens, logprobs)])

    def _accept(self, out: ModelOutput, request_id: str, tokens: list[SampledToken]) -> None:
        state = self._states[request_id]
        for token in tokens:
            state.output_token_ids.append(token.token_id)
            if state.penalties is not None:
                state.penalties.add(token.token_id)
        out.sampled[request_id] = tokens

    def _prompt_logprobs(self, out: ModelOutput, chunk, hidden: torch.Tensor) -> None:
        """Logprob of each next prompt token given the positions of this chunk (the caller's prompt_logprobs)."""
        state = self._states[chunk.request_id]
        prompt = state.prompt_token_ids
        skip = max(0, state.params.logits_from - chunk.start)  # positions before prompt_logprobs_start
        first = chunk.start + skip
        targets = prompt[first + 1: chunk.start + 1 + len(chunk.token_ids)]
        if not targets:
            return
        # In slices, so a 2,048-token chunk never holds [T, vocab] fp32 logits at once (~400 MB at T = 2,048).
        entries = []
        for lo in range(0, len(targets), _PROMPT_LOGITS_ROWS):
            part = targets[lo: lo + _PROMPT_LOGITS_ROWS]
            logits = self.model.compute_logits(hidden[skip + lo: skip + lo + len(part)]).float()
            entries += self.sampler.top_logprobs(
                logits, torch.tensor(part, device=logits.device), state.params.prompt_logprobs).to_lists()
        out.prompt_logprobs[chunk.request_id] = (first, entries)
