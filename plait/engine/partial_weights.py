"""Partial weight updates: write some checkpoint tensors, by HF name, into their rows of the built model.

A trainer may send only the tensors it changed (a LoRA merge, a frozen embedding left out) or its state dict in
buckets. The model's `checkpoint_slots()` (plait/models/slots.py) says where each HF name lives, including its
rows of a fused parameter (updating q_proj rewrites the q rows of qkv_proj and leaves k and v alone). Checking
needs only shapes, so it runs in the caller's thread on a meta-device copy; writing runs in the engine thread on
the plain modules (the weight transforms reverted), copy-on-write per parameter: a parameter that shares memory
with anything else (a tied head, the loader's arrays) is replaced, never changed under the other user.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from plait.models.slots import Slot


def slot_shape(param_shape: torch.Size, slot: Slot) -> tuple[int, ...]:
    """The shape a checkpoint tensor must have to fill `slot` of a parameter of `param_shape`."""
    if slot.start is None:
        return tuple(param_shape)
    return (slot.stop - slot.start, *param_shape[1:])


def check_partial(built, weights: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless every name is one of the model's checkpoint tensors with its shape."""
    from plait.models import build_model

    with torch.device("meta"):
        scratch = build_model(built.model_config, built.dtype)
    slots = scratch.checkpoint_slots()
    shapes = {name: p.shape for name, p in scratch.named_parameters()}
    extra = sorted(set(weights) - set(slots))
    if extra:
        raise ValueError(f"weights has {len(extra)} names the model does not have, e.g. {extra[:3]}")
    for name, tensor in weights.items():
        for slot in slots[name]:
            want = slot_shape(shapes[slot.param], slot)
            if tuple(tensor.shape) != want:
                raise ValueError(f"weights[{name!r}] has shape {tuple(tensor.shape)}; the model's is {want}")


@torch.no_grad()
def write_partial(model: nn.Module, weights: dict[str, torch.Tensor]) -> frozenset[str]:
    """Write each tensor into its slots of `model` (plain modules, as `load_weights` leaves them); returns the
    names of the parameters that changed. The checks of `check_partial` must have passed."""
    slots = model.checkpoint_slots()
    params = dict(model.named_parameters())
    by_param: dict[str, list[tuple[Slot, torch.Tensor]]] = defaultdict(list)
    for name, tensor in weights.items():
        for slot in slots[name]:
            by_param[slot.param].append((slot, tensor))
    for param_name, writes in by_param.items():
        param = params[param_name]
        new = param.detach().clone()  # copy-on-write (see the module docstring)
        for slot, tensor in writes:
            value = (1.0 + tensor.float()) if slot.plus_one else tensor  # as load_weights computes it
            rows = new if slot.start is None else new[slot.start:slot.stop]
            rows.copy_(value.to(new.dtype))
        param.data = new
    return frozenset(by_param)
