"""Ray Data: generate over datasets larger than memory, one offline plait engine per Ray Data actor.

    ds = ray.data.read_parquet("prompts.parquet")          # a column "prompt"
    out = generate_dataset(ds, SamplingParams(max_tokens=64), concurrency=2)
    out.write_parquet("completions/")                       # adds "generated_text", "num_generated_tokens"

Ray Data streams blocks of rows through a pool of `concurrency` actors, each holding one `PlaitProcessor`
(an offline `LLM`); every `map_batches` batch is one `LLM.generate` call, so a batch's prompts share engine
steps and prefix-cache hits. Nothing holds the whole dataset: rows flow in and out as blocks.
"""

from __future__ import annotations

from typing import Any

from plait.distributed.replica import EngineFactory
from plait.params import SamplingParams


class PlaitProcessor:
    """A callable class for `Dataset.map_batches`: prompts column in, generated text column out.

    Arguments are passed through `fn_constructor_kwargs`; the engine loads once per actor, in `__init__`.
    """

    def __init__(self, model: str | None = None, sampling_params: SamplingParams | None = None,
                 prompt_column: str = "prompt", output_column: str = "generated_text", chat: bool = False,
                 _engine_factory: EngineFactory | None = None, **config: Any) -> None:
        from plait.config import EngineConfig
        from plait.engine.llm import LLM

        config = dict(config, model=model)
        prebuilt = _engine_factory(EngineConfig(**config)) if _engine_factory is not None else None
        self.llm = LLM(_prebuilt=prebuilt, **config)
        self.params = sampling_params or SamplingParams()
        self.prompt_column, self.output_column, self.chat = prompt_column, output_column, chat

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.prompt_column not in batch:
            raise ValueError(f"prompt_column {self.prompt_column!r} is not a column of the dataset; it has "
                             f"{sorted(batch)}")
        prompts = [str(p) for p in batch[self.prompt_column]]
        if self.chat:
            outs = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], self.params, use_tqdm=False)
        else:
            outs = self.llm.generate(prompts, self.params, use_tqdm=False)
        batch = dict(batch)
        batch[self.output_column] = [o.outputs[0].text for o in outs]
        batch["num_generated_tokens"] = [len(o.outputs[0].token_ids) for o in outs]
        return batch


def generate_dataset(ds: Any, sampling_params: SamplingParams | None = None, *, model: str | None = None,
                     concurrency: int = 1, batch_size: int = 64, num_cpus_per_replica: int = 1,
                     prompt_column: str = "prompt", output_column: str = "generated_text", chat: bool = False,
                     _engine_factory: EngineFactory | None = None, **config: Any) -> Any:
    """`ds` with a generated column, computed lazily by `concurrency` plait engines (one per Ray Data actor)."""
    from plait.distributed.ray_env import require_ray

    require_ray("generate_dataset (Ray Data)")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if config.get("num_threads") is None:
        config["num_threads"] = num_cpus_per_replica  # as many torch threads as CPUs reserved: no oversubscription
    kwargs = dict(config, model=model, sampling_params=sampling_params, prompt_column=prompt_column,
                  output_column=output_column, chat=chat, _engine_factory=_engine_factory)
    return ds.map_batches(PlaitProcessor, fn_constructor_kwargs=kwargs, concurrency=concurrency,
                          batch_size=batch_size, num_cpus=num_cpus_per_replica)
