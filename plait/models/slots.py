"""Where each checkpoint tensor lives in a built model: the inverse map of `load_weights`' fusions.

`load_weights` concatenates q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj`, copies a tied
embedding into the head, and (Gemma 3) stores norm weights as 1 + w. A weight update that sends only some
tensors by their HF names must write each one into its rows of the fused parameter; every model family says
where with `checkpoint_slots()`, and tests/models/test_slots.py checks that writing every tensor through its slots
builds the same parameters as `load_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """Rows [start, stop) of parameter `param` (all rows when start is None) hold one checkpoint tensor;
    `plus_one`: the parameter holds 1 + the tensor, computed in fp32 (Gemma's norm weights)."""

    param: str
    start: int | None = None
    stop: int | None = None
    plus_one: bool = False


def fused(param: str, sources: list[tuple[str, int]]) -> dict[str, list[Slot]]:
    """Slots of the checkpoint tensors stacked row-wise into `param`, in order, with their row counts."""
    slots: dict[str, list[Slot]] = {}
    row = 0
    for name, rows in sources:
        slots[name] = [Slot(param, row, row + rows)]
        row += rows
    return slots
