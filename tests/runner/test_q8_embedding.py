"""The tied embedding read from Q8_0 blocks (runner/q8_embedding.py): attached only when every row equals the
blocks, hidden states bit-identical to the dense table's, the table freed, and rebuilt exactly on detach."""

import pytest
import torch

from plait.models import build_model
from plait.runner.q8_embedding import _CHECK_ROWS, Q8Embedding, attach_q8_embedding, detach_q8_embedding
from plait.runner.q8_linear import exact_q8_blocks
from tests.helpers import random_weights, tiny_config
from tests.runner.test_q8_linear import q8_exact


def bf16_model_with_q8_table():
    cfg = tiny_config()
    weights = random_weights(cfg)
    weights["model.embed_tokens.weight"] = q8_exact(weights["model.embed_tokens.weight"])
    model = build_model(cfg, torch.bfloat16)
    model.load_weights(weights)
    values, scales = exact_q8_blocks(weights["model.embed_tokens.weight"])
    return model, values, scales


def test_lookup_equals_the_dense_table_and_detach_rebuilds_it():
    model, values, scales = bf16_model_with_q8_table()
    table = model.embed_tokens.detach().clone()
    ids = torch.tensor([[0, 3, 3, table.shape[0] - 1]])
    before = torch.nn.functional.embedding(ids, table)
    assert attach_q8_embedding(model, values, scales) == 1
    assert model.embed_tokens.numel() == 0 and isinstance(model.embed_lookup, Q8Embedding)
    assert torch.equal(model.embed_lookup(ids), before)  # same bits, same shape
    assert attach_q8_embedding(model, values, scales) == 0  # already attached
    assert detach_q8_embedding(model) == 1 and model.embed_lookup is None
    assert torch.equal(model.embed_tokens, table)
    assert detach_q8_embedding(model) == 0


def test_a_table_that_differs_in_one_row_keeps_its_dense_table():
    model, values, scales = bf16_model_with_q8_table()
    model.embed_tokens.data[-1, 0] += 1.0  # the last chunk's last row: every row is checked, not a sample
    assert attach_q8_embedding(model, values, scales) == 0
    assert model.embed_lookup is None and model.embed_tokens.numel() == values.numel()


@pytest.mark.parametrize("rows", [1, _CHECK_ROWS + 3])
def test_table_rebuilds_in_chunks(rows):
    g = torch.Generator().manual_seed(rows)
    values = torch.randint(-127, 128, (rows, 64), generator=g, dtype=torch.int8)
    scales = torch.rand(rows, 2, generator=g).half().float()
    lookup = Q8Embedding(values, scales, torch.bfloat16)
    dense = (values.float().reshape(rows, 2, 32) * scales.unsqueeze(-1)).reshape(rows, 64).bfloat16()
    assert torch.equal(lookup.table(), dense)
