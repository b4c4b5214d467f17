"""Seeded, reproducible benchmark workloads made of token ids.

Prompts are token ids, not text, so plait and a baseline see exactly the same tokens (no tokenizer round trip)
and a prompt's length is exactly what the workload says. Ids are drawn from the vocabulary minus the special
ids, so no prompt accidentally contains an end-of-sequence or chat-control token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

WORKLOADS = ("random", "fixed")


@dataclass
class Workload:
    """`prompts[i]` (token ids) should generate exactly `output_lens[i]` tokens."""

    name: str
    prompts: list[list[int]]
    output_lens: list[int]
    seed: int

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)

    def subset(self, n: int) -> "Workload":
        """The first n requests: what a slower baseline runs when it cannot afford all of them."""
        return Workload(self.name, self.prompts[:n], self.output_lens[:n], self.seed)

    def describe(self) -> str:
        lens = [len(p) for p in self.prompts]
        outs = set(self.output_lens)
        out = str(outs.pop()) if len(outs) == 1 else f"{min(self.output_lens)}-{max(self.output_lens)}"
        return (f"{self.name}: {len(self)} prompts, input {min(lens)}-{max(lens)} tokens "
                f"(mean {sum(lens) / len(lens):.0f}), output {out} tokens, seed {self.seed}")


def _allowed_ids(vocab_size: int, special_ids: Iterable[int]) -> list[int]:
    special = set(special_ids)
    allowed = [i for i in range(vocab_size) if i not in special]
    if not allowed:
        raise ValueError("the vocabulary has no non-special token ids to draw prompts from")
    return allowed


def _draw(rng: random.Random, allowed: list[int], length: int) -> list[int]:
    return [allowed[rng.randrange(len(allowed))] for _ in range(length)]


def random_workload(num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (),
                    input_len_range: tuple[int, int] = (64, 512), output_len: int = 128,
                    seed: int = 0) -> Workload:
    """Prompt lengths uniform in [lo, hi] (inclusive), every request generating `output_len` tokens."""
    lo, hi = input_len_range
    if not 1 <= lo <= hi:
        raise ValueError(f"input length range must satisfy 1 <= min <= max, got {lo}-{hi}")
    _check(num_prompts, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    lengths = [rng.randint(lo, hi) for _ in range(num_prompts)]
    prompts = [_draw(rng, allowed, n) for n in lengths]
    return Workload("random", prompts, [output_len] * num_prompts, seed)


def fixed_workload(num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (), input_len: int = 128,
                   output_len: int = 128, seed: int = 0) -> Workload:
    """Every prompt exactly `input_len` tokens, every output `output_len` tokens."""
    if input_len < 1:
        raise ValueError(f"input length must be >= 1, got {input_len}")
    _check(num_prompts, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    prompts = [_draw(rng, allowed, input_len) for _ in range(num_prompts)]
    return Workload("fixed", prompts, [output_len] * num_prompts, seed)


def _check(num_prompts: int, output_len: int) -> None:
    if num_prompts < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num_prompts}")
    if output_len < 1:
        raise ValueError(f"output length must be >= 1, got {output_len}")


def make_workload(name: str, num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (), *,
                  input_len: int = 128, input_len_range: tuple[int, int] = (64, 512), output_len: int = 128,
                  seed: int = 0) -> Workload:
    """Dispatch on the workload name used by the command line."""
    if name == "random":
        return random_workload(num_prompts, vocab_size, special_ids, input_len_range, output_len, seed)
    if name == "fixed":
        return fixed_workload(num_prompts, vocab_size, special_ids, input_len, output_len, seed)
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
