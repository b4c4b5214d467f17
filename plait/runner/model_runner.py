"""Runs one scheduled step: packed forward over the KV cache, then batched sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plait.core.sched_output import ModelOutput, NewRequestData, SampledToken, SchedulerOutput
from plait.params import SamplingParams
from plait.runner.attention import KVCache, PagedAttention
from plait.runner.input_batch import build_input_batch
from plait.runner.native import Kernels
from plait.sampling import Sampler, SamplingBatch
from plait.sampling.penalties import PenaltyState
from plait.sampling.structured import StructuredState
from plait.sampling.structured_compiler import GrammarCompiler


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


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: KVCache, eos_token_ids: list[int],
                 device: torch.device | str = "cpu", kernels: Kernels | None = None,
                 grammars: GrammarCompiler | None = None, shared_prefix_attention: bool = True) -> None:
        """`kernels`: plait's C kernels (CPU only), used for attention when given; `grammars`: compiles
        structured_outputs (requests that ask for one are rejected without it); `shared_prefix_attention`:
        decodes sharing leading KV blocks attend to them as one group (runner/shared_prefix.py)."""
        self.shared_prefix_attention = shared_prefix_attention
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
        out = ModelOutput()
        if not sched.chunks:
            return out
        batch = build_input_batch(sched.chunks, self.cache.block_size, self.device, self.cache.tensor.dtype,
                                  attention_kernel=self.kernels is not None,
                                  shared_prefix=self.shared_prefix_attention)
        attention = PagedAttention(self.cache, batch.attention, *self._heads, kernels=self.kernels)
        hidden = self.model(batch.input_ids, batch.positions, attention)

        sample_rows, sample_ids = [], []
        for chunk, offset in zip(batch.chunks, batch.offsets):
            if chunk.sample:
                sample_rows.append(offset + len(chunk.token_ids) - 1)
                sample_ids.append(chunk.request_id)
            if chunk.prompt_logprobs:
                self._prompt_logprobs(out, chunk, hidden[offset: offset + len(chunk.token_ids)])
        if not sample_rows:
            return out
        rows = torch.tensor(sample_rows, device=self.device)
        logits = self.model.compute_logits(hidden[rows]).float()
        states = [self._states[rid] for rid in sample_ids]
        structured = self.structured if self.structured and self.structured.constrained(sample_ids) else None
        result = self.sampler(logits, SamplingBatch(
            params=[s.params for s in states],
            generators=[s.generator for s in states],
            output_token_ids=[s.output_token_ids for s in states],
            prompt_token_ids=[s.prompt_token_ids for s in states],
            eos_token_ids=self.eos_token_ids,
            allowed=structured.masks(sample_ids, logits.shape[1], logits.device) if structured else None,
            penalty_states=[s.penalties for s in states],
        ))
        ended = structured.advance(sample_ids, result.token_ids) if structured else ()
        for rid, state, token, logprobs in zip(sample_ids, states, result.token_ids, result.logprobs):
            state.output_token_ids.append(token)
            if state.penalties is not None:
                state.penalties.add(token)
            out.sampled[rid] = SampledToken(token, logprobs, grammar_ended=rid in ended)
        return out

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
