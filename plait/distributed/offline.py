"""Offline data parallelism: one `generate` call's prompts spread over N engine replicas on Ray.

`LLM(..., data_parallel_size=N)` returns a `DataParallelLLM`. It tokenizes every prompt here (bad input fails
before any replica sees it), cuts the batch into N shares of about equal cost with prompts that share a prefix
kept together (`placement.split_by_prefix`), runs the shares at once, one per replica, and returns the outputs
in input order. Each replica batches its share as one offline engine would.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

from plait.core.engine_core import EngineStats
from plait.spec.speculator import SpecStats
from plait.distributed.placement import split_by_prefix
from plait.distributed.replica import (EngineFactory, replica_config, start_replicas, stop_replicas,
                                       validator)
from plait.engine.prompts import encode_prompt, normalize_batch, params_per_prompt
from plait.outputs import RequestOutput
from plait.params import SamplingParams


class DataParallelLLM:
    """`DataParallelLLM(model=None, data_parallel_size=N, **engine_config)`: the offline API over N replicas.

    `ray_address` joins a running cluster (also $RAY_ADDRESS); without one a local cluster is started.
    `num_cpus_per_replica` is what each replica reserves from Ray and its torch thread count.
    """

    def __init__(self, model: str | None = None, *, data_parallel_size: int, num_cpus_per_replica: int = 1,
                 ray_address: str | None = None, verbose: bool = False, _engine_factory: EngineFactory | None = None,
                 **config: Any) -> None:
        self.config = replica_config(dict(config, model=model), num_cpus_per_replica, offline=True)
        self.replicas, infos = start_replicas(data_parallel_size, self.config, num_cpus=num_cpus_per_replica,
                                              factory=_engine_factory, address=ray_address,
                                              feature="LLM(data_parallel_size=...)")
        self.info = infos[0]
        self.tokenizer = self.info.tokenizer
        self._validator = validator(self.info)
        self._next_id = 0
        self._closed = False
        if verbose:
            print(f"{data_parallel_size} replicas on Ray; each: {self.info.describe}")

    @property
    def data_parallel_size(self) -> int:
        return len(self.replicas)

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for one prompt or a list (text or token ids), over all replicas. Outputs in input order."""
        import ray

        batch = normalize_batch(prompts)
        params_list = params_per_prompt(sampling_params, len(batch))
        encoded = [encode_prompt(self.tokenizer, p) for p in batch]  # all errors before anything is queued
        for (_, token_ids), params in zip(encoded, params_list):
            self._validator.validate(token_ids, params)
        ids = [f"offline-{self._next_id + i}" for i in range(len(batch))]
        self._next_id += len(batch)
        # Cost of a prompt: its tokens plus what it may generate (prefill and decode both scale with them).
        costs = [len(ids_) + (p.max_tokens or 0) * p.n for (_, ids_), p in zip(encoded, params_list)]
        shares = split_by_prefix([ids_ for _, ids_ in encoded], costs, len(self.replicas))
        refs = [replica.generate_batch.remote([(ids[i], encoded[i][1], params_list[i]) for i in share])
                for replica, share in zip(self.replicas, shares) if share]
        results: list[RequestOutput | None] = [None] * len(batch)
        for share, outs in zip([s for s in shares if s], ray.get(refs)):
            for i, out in zip(share, outs):
                results[i] = out if encoded[i][0] is None else _with_prompt(out, encoded[i][0])
        return results  # type: ignore[return-value]

    def chat(self, conversations: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True, use_tqdm: bool = False) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation (a list of {role, content}) and generate."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt)
                   for c in conversations]
        return self.generate([self.tokenizer.encode(p, add_special_tokens=False) for p in prompts],
                             sampling_params, use_tqdm)

    def stats(self) -> EngineStats:
        """The replicas' engine counters, summed."""
        import ray

        return sum_stats(ray.get([r.stats.remote() for r in self.replicas]))

    def all_blocks_free(self) -> bool:
        import ray

        return all(ray.get([r.all_blocks_free.remote() for r in self.replicas]))

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            stop_replicas(self.replicas)

    def __enter__(self) -> "DataParallelLLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _with_prompt(out: RequestOutput, text: str) -> RequestOutput:
    out.prompt = text  # the replica saw token ids only
    return out


def sum_stats(stats: list[EngineStats]) -> EngineStats:
    """Counters and gauges of several engines added field by field (kv_usage then follows from the sums)."""
    summed = {f.name: sum(getattr(s, f.name) for s in stats) for f in fields(EngineStats) if f.name != "spec"}
    return EngineStats(**summed, spec=sum_spec_stats([s.spec for s in stats if s.spec is not None]))


def sum_spec_stats(stats: list[SpecStats]) -> SpecStats | None:
    if not stats:
        return None
    width = max(len(s.accepted_per_position) for s in stats)
    return SpecStats(sum(s.num_drafts for s in stats), sum(s.num_draft_tokens for s in stats),
                     sum(s.num_accepted_tokens for s in stats),
                     [sum(s.accepted_per_position[i] for s in stats if i < len(s.accepted_per_position))
                      for i in range(width)])
