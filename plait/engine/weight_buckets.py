"""A weight update sent in buckets: `update_weights(bucket, version, final=False)` stages, the final bucket swaps.

Trainers hold their state dict sharded or stream it in fixed-size buckets (verl, OpenRLHF and PipelineRL all do),
and a model larger than one message must arrive in pieces. Swapping each piece as it arrives would run steps on a
mix of two versions, so buckets are checked (names, shapes, dtypes) and copied as they come, held here, and
swapped together, between two steps, when the bucket with `final=True` arrives: an update of N buckets is the same
as one call with all their tensors. A bucket for another version while one is staged starts that version afresh
(the trainer gave up on the old one; the new update is checked whole at its final bucket). A name sent twice is an
error: with buckets of a sharded state dict it means two shards claim one tensor.
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger(__name__)


class WeightBuckets:
    """The staged buckets of at most one update, safe to fill from several caller threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = None
        self._tensors: dict[str, torch.Tensor] = {}

    def stage(self, version, tensors: dict[str, torch.Tensor]) -> int:
        """Add a checked, copied bucket for `version`; returns how many tensors that version has staged."""
        with self._lock:
            self._restart_if_other(version)
            self._merge(tensors)
            self._version = version
            return len(self._tensors)

    def take(self, version, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The final bucket: every staged tensor of `version` with `tensors` added; nothing stays staged."""
        with self._lock:
            self._restart_if_other(version)
            try:
                self._merge(tensors)
                return self._tensors
            finally:
                self._version, self._tensors = None, {}

    def _restart_if_other(self, version) -> None:
        if self._tensors and self._version != version:
            log.warning("weight update %r dropped after %d staged tensors: a bucket for version %r arrived",
                        self._version, len(self._tensors), version)
            self._version, self._tensors = None, {}

    def _merge(self, tensors: dict[str, torch.Tensor]) -> None:
        twice = sorted(set(tensors) & set(self._tensors))
        if twice:
            raise ValueError(f"weights: {len(twice)} names were already sent in an earlier bucket of version "
                             f"{self._version!r}, e.g. {twice[:3]}")
        self._tensors.update(tensors)
