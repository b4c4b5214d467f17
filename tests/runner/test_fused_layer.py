"""The fused decoder layer (native/decoder_layer.c via runner/fused_layer.py): it serves every step of the default
4-bit bf16 configuration, its logprobs are bit-identical to the module-by-module path it replaces (the reference),
and it declines (the modules then run) whenever a part it does not implement is in play."""

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest
import torch

from plait import LLM, SamplingParams
from plait.models.llama import Linear
from plait.runner import fused_layer
from plait.runner.native import load_kernels

kernels = load_kernels()
needs_vnni = pytest.mark.skipif(kernels is None or kernels.llama_layer_bf16 is None,
                                reason="no native kernels or no AVX512-VNNI on this CPU")


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory) -> str:
    spec = spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" / "test_gguf_file.py")
    fixtures = module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    path = tmp_path_factory.mktemp("fused") / "tiny.gguf"
    fixtures.write_tiny_gguf(path, qtype=fixtures.Q.Q4_1)
    return str(path)


def served_calls(monkeypatch) -> dict[str, int]:
    """Count the fused layer's calls by outcome."""
    counts = {"served": 0, "declined": 0}
    call = fused_layer.FusedLlamaLayer.__call__

    def counting(self, *args):
        result = call(self, *args)
        counts["served" if result is not None else "declined"] += 1
        return result

    monkeypatch.setattr(fused_layer.FusedLlamaLayer, "__call__", counting)
    return counts


def run_mixed_batch(llm: LLM) -> list[tuple[list[int], list[dict[int, float]]]]:
    """Prompts of several lengths, chunked prefill beside decodes, sampled with a seed: tokens and each position's
    top-3 logprobs."""
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22], [30 + i for i in range(9)], [40]]
    params = [SamplingParams(max_tokens=8, temperature=t, seed=7, logprobs=3, ignore_eos=True)
              for t in (0.0, 0.9, 0.0, 1.0)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.scheduler.kv.all_blocks_free()
    return [tokens_and_logprobs(o.outputs[0]) for o in outputs]


def tokens_and_logprobs(completion) -> tuple[list[int], list[dict[int, float]]]:
    return completion.token_ids, [{t: p.logprob for t, p in position.items()} for position in completion.logprobs]


@needs_vnni
def test_fused_layers_serve_every_step_and_match_the_module_path_bit_for_bit(q4_gguf, monkeypatch):
    counts = served_calls(monkeypatch)
    reference = LLM(q4_gguf, dtype="bfloat16", kv_cache_memory=1 << 20, fused_layers=False,
                    max_num_batched_tokens=16)
    assert all(layer.fused_forward is None for layer in reference.engine.runner.model.layers)
    expected = run_mixed_batch(reference)
    assert counts == {"served": 0, "declined": 0}

    fused = LLM(q4_gguf, dtype="bfloat16", kv_cache_memory=1 << 20, max_num_batched_tokens=16)
    layers = fused.engine.runner.model.layers
    assert all(layer.fused_forward is not None for layer in layers)
    assert run_mixed_batch(fused) == expected
    assert counts["served"] > 0 and counts["declined"] == 0
    assert counts["served"] % len(layers) == 0  # every layer of every step


@needs_vnni
def test_a_layer_with_a_part_the_kernel_lacks_runs_its_modules(q4_gguf, monkeypatch):
    llm = LLM(q4_gguf, dtype="bfloat16", kv_cache_memory=1 << 20, max_num_batched_tokens=16)
    expected = run_mixed_batch(llm)
    layer = llm.engine.runner.model.layers[0]
    four_bit = layer.o_proj
    dense = Linear(layer.num_heads * layer.head_dim, four_bit.out_features, dtype=torch.bfloat16)
    dense.weight.data = torch.zeros_like(dense.weight)  # an unmistakable change: this layer's attention is cut
    layer.o_proj = dense
    counts = served_calls(monkeypatch)
    changed = run_mixed_batch(llm)
    assert counts["declined"] > 0 and counts["served"] > 0  # layer 0 declines, the others still fuse
    assert changed != expected  # the module path ran, with the zeroed projection
    layer.o_proj = four_bit
    assert run_mixed_batch(llm) == expected


@needs_vnni
def test_shared_prefix_steps_take_the_module_path(q4_gguf, monkeypatch):
    counts = served_calls(monkeypatch)
    llm = LLM(q4_gguf, dtype="bfloat16", kv_cache_memory=1 << 20, shared_prefix_attention=True, block_size=4)
    prompt = list(range(5, 37))  # 8 blocks shared by every sample
    out = llm.generate([prompt], SamplingParams(n=4, max_tokens=4, temperature=1.0, seed=3, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs) == 4
    assert counts["declined"] > 0  # the decodes grouped under their shared prefix
    assert llm.engine.scheduler.kv.all_blocks_free()


@needs_vnni
@pytest.mark.slow
def test_default_model_fused_equals_module_path_bit_for_bit(monkeypatch):
    """The default configuration (SmolLM2's Q4_1 GGUF, bf16, VNNI 4-bit layers): same tokens and logprobs with and
    without the fused layers, on a batch mixing a long chunked prefill with decodes."""
    counts = served_calls(monkeypatch)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, " * 40, "2 + 2 ="]
    params = [SamplingParams(max_tokens=12, temperature=t, seed=11, logprobs=3, ignore_eos=True)
              for t in (0.0, 0.8, 0.0, 1.0)]
    results = []
    for fused in (False, True):
        llm = LLM(fused_layers=fused, max_num_batched_tokens=64)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        assert llm.engine.scheduler.kv.all_blocks_free()
        results.append([tokens_and_logprobs(o.outputs[0]) for o in outputs])
    assert counts["served"] > 0 and counts["declined"] == 0
    assert results[0] == results[1]
