"""The HuggingFace transformers baseline: the same model file, the same token prompts, greedy `generate`.

It runs the way a typical offline HF user would: static, left-padded batches with an attention mask, all rows
forced to the same number of new tokens (`min_new_tokens`), so its output token count matches plait's exactly.
Prompts are sorted by length before batching, which gives HF its least-padded batches (a fair, not a strawman,
baseline). It runs in plait's process, so it uses the same torch thread count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from plait.bench.report import Throughput
from plait.bench.workloads import Workload


def load_hf_model(model_path: str | Path, dtype: torch.dtype) -> Any:
    """A .gguf file or a HF directory, as a dense model in `dtype`, eval mode.

    GGUF weights are dequantized at load, as plait does: newer transformers can keep them packed and compute
    through optional `kernels` (fp32 only), which would compare a different kind of model, so that is refused.
    """
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    if path.suffix == ".gguf":
        extra: dict[str, Any] = {}
        try:
            from transformers import GgufConfig

            extra["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always dequantize
            pass
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **extra)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return prepare_greedy(model)


def prepare_greedy(model: Any) -> Any:
    """Eval mode, greedy generation config, a pad id (padding is masked, so any id works)."""
    model.eval()
    # Drop sampling defaults shipped with the model so generate() does not warn about them.
    cfg = model.generation_config
    cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = False, None, None, None
    if cfg.pad_token_id is None:
        eos = cfg.eos_token_id
        cfg.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return model


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


class _TokenBar:
    """A generate() streamer that advances a tqdm bar by one token per row each step (the first put() is the prompt)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if self.seen_prompt:
            self.bar.update(value.shape[0])
        self.seen_prompt = True

    def end(self) -> None:
        self.seen_prompt = False


def run_hf_batches(model: Any, workload: Workload, batch_size: int, progress: bool = True) -> Throughput:
    """Greedy-generate every prompt in static batches of `batch_size`; time the whole pass."""
    order = sorted(range(len(workload)), key=lambda i: len(workload.prompts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = model.generation_config.pad_token_id
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(len(b) * max(workload.output_lens[i] for i in b) for b in batches)
        bar = tqdm(total=total, desc=f"hf generate ({len(workload)} req)", unit="tok", dynamic_ncols=True)
    output_tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            ids, mask = _left_pad([workload.prompts[i] for i in batch], pad_id)
            new = max(workload.output_lens[i] for i in batch)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=pad_id,
                                 streamer=_TokenBar(bar) if bar is not None else None)
            generated = out.shape[1] - ids.shape[1]
            output_tokens += sum(min(generated, workload.output_lens[i]) for i in batch)
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return Throughput(wall, workload.prompt_tokens, output_tokens, len(workload))


class _FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2 and self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_time_single(model: Any, prompt: list[int], output_len: int) -> tuple[float, float, int]:
    """Batch-1 greedy generate -> (seconds to first token, seconds for the whole call, tokens generated)."""
    ids = torch.tensor([prompt])
    clock = _FirstTokenClock()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                             min_new_tokens=output_len, do_sample=False, streamer=clock,
                             pad_token_id=model.generation_config.pad_token_id)
        total = time.perf_counter() - start
    first = (clock.first_token_at or start + total) - start
    return first, total, out.shape[1] - ids.shape[1]
