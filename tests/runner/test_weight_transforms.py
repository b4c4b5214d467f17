"""Weight transforms: one ordered list, each undone exactly, so new weights can be loaded by checkpoint names and
the transforms applied again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plait.models import build_model
from plait.models.llama import Linear
from plait.runner.packed_linear import PackedLinear, can_pack
from plait.runner.q4_linear import Q4Linear, can_use_q4, detach_q4
from plait.runner.weight_transforms import (PackWeights, Q4Weights, TransformContext, apply_transforms,
                                            default_transforms, revert_transforms)
from tests.helpers import plait_logits, random_weights, tiny_config

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not can_pack(torch.float32, CPU, batch_invariant=True), reason="no oneDNN")


def tiny(seed: int = 0):
    cfg = tiny_config("llama", tie_word_embeddings=False)
    model = build_model(cfg, torch.float32)
    model.load_weights(random_weights(cfg, seed))
    return model.eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_default_order_is_q8_then_vnni_q4_then_pack_then_q8_head_then_q4_then_small_batch():
    assert [t.name for t in default_transforms()] == ["q8", "q4_vnni", "packed", "q8_head", "q4", "small_batch"]
    assert [t.name for t in default_transforms(packed_weights=False, small_batch=False, exact_q8=False)] == [
        "q4_vnni", "q4"]


def test_which_transforms_apply_where():
    invariant = TransformContext(torch.float32, CPU, "model.gguf", batch_invariant=True)
    # fp32 is packed only for batch invariance (MKL is faster at batch 1); the 4-bit path never is invariant.
    assert not PackWeights().applies(TransformContext(torch.float32, CPU))
    assert PackWeights().applies(invariant) == can_pack(torch.float32, CPU, batch_invariant=True)
    assert not Q4Weights().applies(TransformContext(torch.bfloat16, CPU, "model.gguf", batch_invariant=True))
    assert not Q4Weights().applies(TransformContext(torch.bfloat16, CPU, "some/hf/dir"))
    assert not PackWeights().applies(TransformContext(torch.float32, torch.device("cuda"), batch_invariant=True))


@needs_onednn
def test_pack_reverts_to_the_same_weights_and_reapplies_after_new_weights():
    model = tiny(seed=0)
    before = state(model)
    ctx = TransformContext(torch.float32, CPU, batch_invariant=True)
    applied = apply_transforms(model, default_transforms(), ctx)
    assert [t.name for t in applied] == ["packed"]  # no .gguf source: the 4-bit path does not apply
    assert not any(isinstance(m, Linear) for m in model.modules())
    packed_logits = plait_logits(model, [5, 9, 300, 7, 1000, 3])

    revert_transforms(model, applied)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # A weight update: load new weights by checkpoint names into the plain modules, then transform again.
    cfg = model.config
    model.load_weights(random_weights(cfg, seed=1))
    applied = apply_transforms(model, default_transforms(), ctx)
    fresh = tiny(seed=1)
    apply_transforms(fresh, default_transforms(), ctx)
    tokens = [5, 9, 300, 7, 1000, 3]
    assert torch.equal(plait_logits(model, tokens), plait_logits(fresh, tokens))
    assert not torch.equal(plait_logits(model, tokens), packed_logits)


@pytest.mark.skipif(not can_use_q4(torch.bfloat16, CPU), reason="no CPU int4 kernel")
def test_q4_detach_restores_the_dense_module():
    from plait.loading.gguf_file import Q4Blocks

    model = tiny()
    layer = model.layers[0]
    dense = layer.o_proj
    rng = np.random.default_rng(0)
    rows, cols = dense.weight.shape
    blocks = Q4Blocks(rng.integers(0, 16, (rows, cols)).astype(np.uint8),
                      rng.uniform(0.001, 0.02, (rows, cols // 32)).astype(np.float32),
                      rng.normal(0, 0.02, (rows, cols // 32)).astype(np.float32))
    layer.o_proj = Q4Linear(dense, blocks)
    assert detach_q4(model) == 1
    assert layer.o_proj is dense
