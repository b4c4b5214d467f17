"""The exact-Q8_0 linear (native/q8_gemm.c, runner/q8_linear.py): blocks recovered only when they reproduce the
weights bit for bit, results equal to F.linear within summation-order rounding, every row bitwise the same at any
row count (batch-invariant), reversible as a weight transform, and applied end to end to a GGUF's Q8_0 LM head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plait.models import build_model
from plait.models.llama import Linear
from plait.runner.native import load_kernels
from plait.runner.q8_linear import Q8Linear, exact_q8_blocks, kernel_usable, unwrap_q8_linears, wrap_q8_linears
from plait.runner.weight_transforms import Q8Weights, TransformContext, apply_transforms, default_transforms
from tests.helpers import plait_logits, random_weights, tiny_config

kernels = load_kernels()
needs_kernel = pytest.mark.skipif(kernels is None or not kernel_usable(kernels), reason="no AVX2+FMA C kernel")
CPU = torch.device("cpu")


def q8_exact(weight: torch.Tensor) -> torch.Tensor:
    """`weight` quantized to Q8_0 as llama.cpp writes it (d = amax / 127 stored as fp16, q = round(w / d)), then
    dequantized: the fp32 values a GGUF loader produces for a Q8_0 tensor."""
    import gguf
    from gguf import quants

    raw = quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)).reshape(weight.shape)


def q8_linear_layer(n_out: int, n_in: int, bias: bool, seed: int = 0) -> Linear:
    g = torch.Generator().manual_seed(seed)
    layer = Linear(n_in, n_out, bias)
    layer.weight.data = q8_exact(torch.randn(n_out, n_in, generator=g) * 0.05)
    if bias:
        layer.bias.data = torch.randn(n_out, generator=g)
    return layer


def test_blocks_are_recovered_only_when_exact():
    w = q8_exact(torch.randn(70, 96))
    values, scales = exact_q8_blocks(w)
    assert values.dtype == torch.int8 and values.shape == (70, 96) and scales.shape == (70, 3)
    assert torch.equal((values.float().view(70, 3, 32) * scales.unsqueeze(-1)).view(70, 96), w)
    w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(10.0))  # one ulp off: no longer Q8_0
    assert exact_q8_blocks(w) is None
    assert exact_q8_blocks(torch.randn(70, 96)) is None  # plain fp32 weights
    assert exact_q8_blocks(torch.zeros(4, 96)) is not None  # all-zero blocks have scale 0
    assert exact_q8_blocks(q8_exact(torch.randn(4, 64))[:, :48].contiguous()) is None  # K not a multiple of 32
    assert exact_q8_blocks(q8_exact(torch.randn(4, 64)).to(torch.bfloat16)) is None


@needs_kernel
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear_and_every_row_is_batch_invariant(bias):
    plain = q8_linear_layer(300, 640, bias)
    fast = Q8Linear(plain, *exact_q8_blocks(plain.weight), kernels.q8_linear_f32)
    x = torch.randn(40, 640)
    alone = torch.cat([fast(x[i: i + 1]) for i in range(len(x))])
    for rows in (1, 2, 3, 4, 5, 7, 8, 13, 40):  # both loop structures (<= 3 rows, more) and every tail
        got = fast(x[:rows])
        torch.testing.assert_close(got, F.linear(x[:rows], plain.weight, plain.bias), rtol=1e-5, atol=1e-5)
        assert torch.equal(got, alone[:rows])  # row i among `rows` == row i alone, bit for bit
    assert fast(x[:0]).shape == (0, 300)
    assert fast(x[:6].view(2, 3, 640)).shape == (2, 3, 300)


@needs_kernel
def test_transform_swaps_only_exact_weights_and_reverts():
    cpu32 = TransformContext(torch.float32, CPU, native_kernels=True)
    assert Q8Weights().applies(cpu32)
    assert Q8Weights().applies(TransformContext(torch.float32, CPU, batch_invariant=True, native_kernels=True))
    assert not Q8Weights().applies(TransformContext(torch.float32, CPU))
    assert not Q8Weights().applies(TransformContext(torch.bfloat16, CPU, native_kernels=True))
    exact, plain = q8_linear_layer(64, 64, False), Linear(64, 64)
    plain.weight.data = torch.randn(64, 64)
    model = torch.nn.Sequential(exact, plain)
    assert wrap_q8_linears(model, kernels) == 1
    assert isinstance(model[0], Q8Linear) and model[1] is plain
    assert unwrap_q8_linears(model) == 1
    assert type(model[0]) is Linear and model[0].weight is exact.weight


@needs_kernel
def test_a_q8_lm_head_gives_the_plain_models_logits():
    """A tied Q8_0 embedding (as both shipped GGUFs have) becomes a Q8Linear head through the default transforms,
    and the model's logits stay those of the plain fp32 model."""
    cfg = tiny_config("llama", vocab_size=512)
    weights = random_weights(cfg, seed=3)
    weights["model.embed_tokens.weight"] = q8_exact(weights["model.embed_tokens.weight"])
    plain, fast = build_model(cfg, torch.float32), build_model(cfg, torch.float32)
    plain.load_weights(dict(weights))
    fast.load_weights(dict(weights))
    applied = apply_transforms(fast, default_transforms(packed_weights=False, native_q4=False),
                               TransformContext(torch.float32, CPU, native_kernels=True))
    assert [t.name for t in applied][:1] == ["q8"] and isinstance(fast.lm_head, Q8Linear)
    tokens = list(range(5, 40))
    torch.testing.assert_close(plait_logits(fast.eval(), tokens), plait_logits(plain.eval(), tokens),
                               rtol=1e-4, atol=1e-4)


def _gguf_fixtures():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gguf_fixtures", Path(__file__).parents[1] / "loading" /
                                                  "test_gguf_file.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_kernel
@pytest.mark.parametrize("tied", [False, True])
def test_bf16_engine_reads_the_gguf_q8_head_at_steps_of_few_rows_only(tmp_path, tied):
    from plait import LLM, SamplingParams
    from plait.loading import load_model
    from plait.runner.q8_linear import Q8HeadLinear

    fixtures = _gguf_fixtures()
    path = tmp_path / "tiny.gguf"
    expected = fixtures.write_tiny_gguf(path, qtype=fixtures.Q.Q8_0, tied=tied)
    llm = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20)
    head = llm.engine.runner.model.lm_head
    assert isinstance(head, Q8HeadLinear) and head.max_rows == 2
    exact = torch.from_numpy(expected["lm_head.weight" if not tied else "model.embed_tokens.weight"])  # exact, fp32
    x = torch.randn(3, exact.shape[1]).bfloat16()
    with torch.inference_mode():
        few, many = head(x[:2]), head(x)
        assert few.dtype == torch.float32
        torch.testing.assert_close(few, x[:2].float() @ exact.T, rtol=1e-5, atol=1e-5)
        if head.vnni is None:  # 3 rows: oneDNN's bf16 GEMM on the dense head (VNNI's kernel: tests/test_q8_vnni.py)
            assert torch.equal(many, head.dense(x))
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    # A tied embedding reads the same blocks (runner/q8_embedding.py): no bf16 table beside them. An untied one is
    # another matrix and keeps its table.
    model = llm.engine.runner.model
    assert (model.embed_lookup is not None) == tied and (model.embed_tokens.numel() == 0) == tied
    if tied:
        assert torch.equal(model.embed_lookup(torch.tensor([0, 5, 7])), exact[[0, 5, 7]].bfloat16())

    def q8_matrices() -> tuple[bool, bool]:
        model = llm.engine.runner.model
        return isinstance(model.lm_head, Q8HeadLinear), model.embed_lookup is not None

    # A file update brings its own blocks; a partial update that leaves the head alone keeps them; a state dict's
    # head, or a partial update that writes it, is dense only (the file's blocks may be old weights).
    llm.update_weights(str(path), "file")
    assert q8_matrices() == (True, tied)
    weights = dict(load_model(str(path), dtype=torch.bfloat16).weights)
    model = llm.engine.runner.model
    writes_head = {name for name, slots in model.checkpoint_slots().items()
                   if any(slot.param == "lm_head.weight" for slot in slots)}
    layer = {n: w for n, w in weights.items() if ".layers.0." in n}
    head_module = model.lm_head
    llm.update_weights(layer, "partial", partial=True)
    assert q8_matrices() == (True, tied) and llm.engine.runner.model.lm_head is head_module  # left as it was
    llm.update_weights({n: weights[n] for n in writes_head}, "partial-head", partial=True)
    assert q8_matrices() == (False, False)
    assert torch.equal(llm.engine.runner.model.embed_tokens, weights["model.embed_tokens.weight"])
    llm.update_weights(str(path), "file-again")
    assert q8_matrices() == (True, tied)
    llm.update_weights(weights, "state-dict")
    assert q8_matrices() == (False, False)
    assert llm.engine.scheduler.kv.all_blocks_free()

    # Its logits depend on the step's size, so batch-invariant numerics and --no-q8-weights keep the dense head.
    for kwargs in ({"batch_invariant": True}, {"q8_weights": False}):
        other = LLM(str(path), dtype="bfloat16", kv_cache_memory=1 << 20, **kwargs)
        assert not isinstance(other.engine.runner.model.lm_head, Q8HeadLinear)
