"""The AVX512-VNNI Q8_0 kernel of the LM head (native/q8_vnni.c): its layout, its stated arithmetic (int8
activations per block of 32 against the file's int8 values and fp16 scales), bit-identical rows at any step size,
and the head using it above the few-rows kernel's range."""

import numpy as np
import pytest
import torch

from plait.models.llama import Linear
from plait.runner.native import load_kernels
from plait.runner.q8_linear import Q8HeadLinear
from plait.runner.q8_vnni import pack_q8_vnni, q8_vnni_linear

kernels = load_kernels()
needs_vnni = pytest.mark.skipif(kernels is None or kernels.q8_vnni_linear_bf16 is None,
                                reason="no native kernels or no AVX512-VNNI on this CPU")


def random_q8(rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-128, 128, (rows, cols), generator=g, dtype=torch.int8)
    scales = (torch.rand(rows, cols // 32, generator=g) * 0.01).half().float()
    return values, scales


def weights(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows, cols = values.shape
    return (values.double().reshape(rows, -1, 32) * scales.double().reshape(rows, -1, 1)).reshape(rows, cols)


def exactly_quantizable(rows: int, cols: int, seed: int = 1) -> torch.Tensor:
    """bf16 activations whose int8 rounding is exact: per block, integers in [-127, 127] with one at +-127, times
    a power of two, so x / (amax / 127) lands on the integers themselves."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (rows, cols // 32, 32), generator=g)
    q[:, :, 0] = 127
    scale = 2.0 ** torch.randint(-8, 0, (rows, cols // 32, 1), generator=g)
    return (q * scale).reshape(rows, cols).bfloat16()


def test_pack_layout_puts_four_inputs_of_sixteen_outputs_per_chunk_then_the_scales():
    values, scales = random_q8(32, 64)
    packed = pack_q8_vnni(values, scales).numpy()
    assert packed.size == 2 * 2 * 544  # 2 tiles x 2 blocks
    tile, block, chunk, n, i = 1, 1, 5, 7, 2
    start = (tile * 2 + block) * 544
    assert packed[start + 64 * chunk + 4 * n + i] == int(values[16 * tile + n, 32 * block + 4 * chunk + i]) + 128
    d = packed[start + 512: start + 544].view(np.float16)
    assert np.array_equal(d.astype(np.float32), scales[16 * tile: 16 * tile + 16, block].numpy())
    with pytest.raises(ValueError, match="tile"):
        pack_q8_vnni(values[:8], scales[:8])
    with pytest.raises(ValueError, match="fp16"):
        pack_q8_vnni(values, scales + 1e-6)


@needs_vnni
@pytest.mark.parametrize("rows", [1, 3, 9, 64])
def test_kernel_computes_its_stated_arithmetic(rows):
    values, scales = random_q8(48, 96)
    x = exactly_quantizable(rows, 96)
    out = q8_vnni_linear(kernels.q8_vnni_linear_bf16, x, pack_q8_vnni(values, scales), 48)
    assert out.dtype == torch.float32
    expected = x.double() @ weights(values, scales).T  # the rounding is exact, so this is the kernel's arithmetic
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


@needs_vnni
def test_random_activations_stay_close_and_every_row_is_bit_identical_alone_and_in_any_step():
    values, scales = random_q8(64, 576, seed=3)
    packed = pack_q8_vnni(values, scales)
    x = torch.randn(70, 576, generator=torch.Generator().manual_seed(4)).bfloat16()
    full = q8_vnni_linear(kernels.q8_vnni_linear_bf16, x, packed, 64)
    dense = x.double() @ weights(values, scales).T
    assert ((full.double() - dense).norm() / dense.norm()).item() < 0.01  # int8 activations: ~0.5% here
    for m in (1, 2, 5, 8, 9, 17, 33):
        part = q8_vnni_linear(kernels.q8_vnni_linear_bf16, x[:m], packed, 64)
        assert torch.equal(part, full[:m])


@needs_vnni
def test_head_takes_the_few_rows_kernel_up_to_max_rows_and_vnni_above():
    values, scales = random_q8(64, 96, seed=5)
    exact = weights(values, scales).float()
    dense = Linear(96, 64, dtype=torch.bfloat16)
    dense.weight.data = exact.bfloat16()
    head = Q8HeadLinear(dense, values, scales, kernels.q8_linear_f32, 2, kernels.q8_vnni_linear_bf16)
    x = exactly_quantizable(5, 96)
    few, many = head(x[:2]), head(x)
    torch.testing.assert_close(few, x[:2].float() @ exact.T, rtol=1e-5, atol=1e-5)  # fp32 x the exact values
    assert torch.equal(many, q8_vnni_linear(kernels.q8_vnni_linear_bf16, x, head.vnni_packed, 64))
    torch.testing.assert_close(many.double(), x.double() @ exact.double().T, rtol=1e-5, atol=1e-4)


@needs_vnni
@pytest.mark.slow
def test_default_model_head_takes_the_vnni_kernel_at_every_step_also_under_batch_invariance():
    from plait import LLM, SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0, logprobs=2, ignore_eos=True)
    for invariant in (False, True):
        llm = LLM(batch_invariant=invariant)
        head = llm.engine.runner.model.lm_head
        assert isinstance(head, Q8HeadLinear) and head.vnni is not None and head.max_rows == 0
        assert head.dense is None  # tied: the embedding's rows were checked against the blocks; one copy kept
        if invariant:
            alone = llm.generate(["The capital of France is"], params, use_tqdm=False)[0].outputs[0]
            batch = llm.generate(["The capital of France is"] + [f"Question {i}: what is {i} + {i}?"
                                                                  for i in range(6)], params, use_tqdm=False)
            inside = batch[0].outputs[0]
            assert inside.token_ids == alone.token_ids
            assert [{t: p.logprob for t, p in pos.items()} for pos in inside.logprobs] == \
                [{t: p.logprob for t, p in pos.items()} for pos in alone.logprobs]
        assert llm.engine.scheduler.kv.all_blocks_free()



@needs_vnni
def test_a_released_head_rebuilds_its_dense_matrix_bit_for_bit():
    """Without its dense module (dropped where a tied embedding checked every row against the blocks: the
    default model, tested below) the head still serves every step, and detaching rebuilds the dense matrix."""
    from plait.runner.q8_linear import detach_q8_head

    values, scales = random_q8(64, 96, seed=5)
    dense = Linear(96, 64, dtype=torch.bfloat16)
    dense.weight.data = weights(values, scales).float().bfloat16()
    head = Q8HeadLinear(dense, values, scales, kernels.q8_linear_f32, 0, kernels.q8_vnni_linear_bf16)
    x = torch.randn(5, 96).bfloat16()
    before = head(x)
    head.release_dense()
    assert head.dense is None and torch.equal(head(x), before)
    holder = torch.nn.Module()
    holder.lm_head = head
    assert detach_q8_head(holder) == 1
    assert type(holder.lm_head) is Linear and torch.equal(holder.lm_head.weight, dense.weight)
    with pytest.raises(ValueError, match="fallback"):
        Q8HeadLinear(dense, values, scales, kernels.q8_linear_f32, 2, kernels.q8_vnni_linear_bf16).release_dense()
