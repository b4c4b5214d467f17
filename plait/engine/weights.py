"""Weight updates with versions: check a new state dict, swap it into a built engine between steps.

Three steps, split so that a bad update never touches the serving engine:
1. `prepare_update` (caller's thread): read a path (safetensors dir / GGUF) or take a state dict by HF names, and
   dry-run the model's own `load_weights` on the meta device: missing or extra names, wrong shapes and non-float
   dtypes raise ValueError here, and the engine keeps its old weights.
2. `swap_weights` (engine thread, between steps): undo the load-time weight transforms, load the new tensors by
   their checkpoint names (the model fuses q/k/v and gate/up as at load time), apply the transforms again, and
   reset the prefix cache. The KV manager's epochs guarantee that tables created before the reset never register
   blocks afterwards, so no later request is served KV computed with the old weights.
3. The frontend stamps every step's outputs with the version that produced them (`RequestOutput.weight_version`,
   per-token segments `CompletionOutput.weight_versions`).

`WeightUpdater` holds the modes' state for AsyncLLM's engine thread: 'abort' ends in-flight requests first,
'drain' holds new requests back until the running ones finish on the old weights, 'continue' swaps at once and
in-flight requests go on from their KV with the new weights.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch

from plait.engine.partial_weights import check_partial, write_partial
from plait.engine.weight_buckets import WeightBuckets
from plait.runner.cpu_memory import loading_scope

Version = Union[str, int]
MODES = ("abort", "drain", "continue")


@dataclass
class WeightUpdateInfo:
    """What an update did and what it cost."""

    version: Version
    mode: str
    num_tensors: int
    prepare_seconds: float  # reading / checking, in the caller's thread
    swap_seconds: float = 0.0  # in the engine thread, between steps (the engine computes nothing meanwhile)
    wait_seconds: float = 0.0  # from queueing to the swap (includes draining)
    aborted: int = 0  # requests ended by mode 'abort'
    partial: bool = False  # only some tensors were sent; the others kept their values
    final: bool = True  # False: a bucket was staged (update_weights(..., final=False)); nothing swapped yet


@dataclass
class PreparedUpdate:
    weights: dict[str, torch.Tensor]
    info: WeightUpdateInfo
    queued_at: float = field(default_factory=time.perf_counter)
    source: str | None = None  # the checkpoint file, when the update is one (its own 4-bit blocks are then used)

    @property
    def partial(self) -> bool:
        return self.info.partial


class _Recorder(dict):
    """A dict that remembers which names `load_weights` read, so names it never reads count as extra."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __contains__(self, name) -> bool:
        self.read.add(name)
        return super().__contains__(name)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'abort', 'drain' or 'continue', got {mode!r}")


def check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise ValueError(f"version must be a str or an int, got {type(version).__name__}")


def prepare_update(built, weights: Mapping[str, torch.Tensor] | str | Path, version: Version, mode: str,
                   partial: bool = False, final: bool = True,
                   buckets: WeightBuckets | None = None) -> PreparedUpdate:
    """Load and check an update without touching the engine. Raises ValueError naming what is wrong.

    `partial`: the state dict may hold only some of the model's tensors (the others keep their values).
    `final=False`: `weights` is one bucket of a larger update; it is checked and staged in `buckets`, and the
    returned update has `info.final` False and nothing to swap (plait/engine/weight_buckets.py)."""
    check_mode(mode)
    check_version(version)
    start = time.perf_counter()
    if isinstance(weights, (str, Path)):
        if not final:
            raise ValueError("weights: a path is a whole update; send buckets (final=False) as state dicts")
        from plait.loading import load_model

        loaded = load_model(str(weights), dtype=built.dtype)
        tensors = dict(loaded.weights)
        partial = False  # a checkpoint file is whole
        staged = buckets is not None and buckets.take(version, {})
        if staged:
            raise ValueError(f"weights: {len(staged)} tensors of version {version!r} were staged in buckets; "
                             "finish them with a state dict, not a path")
    elif isinstance(weights, Mapping):
        tensors = copy_state_dict(built, weights)
    else:
        raise ValueError(f"weights must be a state dict (name -> tensor) or a path, got {type(weights).__name__}")
    if not final:
        if buckets is None:
            raise ValueError("final=False needs an engine that stages buckets")
        check_partial(built, tensors)  # fail at the bucket that is wrong, not at the end
        staged_count = buckets.stage(version, tensors)
        info = WeightUpdateInfo(version, mode, staged_count, time.perf_counter() - start, partial=partial,
                                final=False)
        return PreparedUpdate({}, info)
    if buckets is not None and isinstance(weights, Mapping):
        tensors = buckets.take(version, tensors)
    if partial:
        check_partial(built, tensors)
    else:
        check_weights(built, tensors)
    info = WeightUpdateInfo(version, mode, len(tensors), time.perf_counter() - start, partial=partial)
    return PreparedUpdate(tensors, info, source=str(weights) if isinstance(weights, (str, Path)) else None)


def copy_state_dict(built, weights: Mapping) -> dict[str, torch.Tensor]:
    """The trainer's tensors, copied (the engine must not change when the trainer later updates its own tensors in
    place) to the engine's device; non-tensors and non-float dtypes raise ValueError."""
    tensors = {}
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"weights[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"weights[{name!r}] has dtype {t.dtype}; a floating-point dtype is required")
        tensors[name] = t.detach().to(built.device, copy=True)
    return tensors


def check_weights(built, weights: dict[str, torch.Tensor]) -> None:
    """Dry-run `load_weights` on a meta-device copy of the model: same names, fusions and shape checks, no data."""
    from plait.models import build_model

    for name, t in weights.items():
        if not t.is_floating_point():
            raise ValueError(f"weights[{name!r}] has dtype {t.dtype}; a floating-point dtype is required")
    with torch.device("meta"):
        scratch = build_model(built.model_config, built.dtype)
    probe = _Recorder({name: t.to("meta") for name, t in weights.items()})
    try:
        scratch.load_weights(probe)
    except (KeyError, RuntimeError) as exc:  # a shape the fusion cannot concatenate, a name it must have
        raise ValueError(f"weights do not fit the model: {exc}") from exc
    except ValueError as exc:
        if "missing" in str(exc):
            raise ValueError(f"{exc} (to update only some tensors, pass partial=True)") from exc
        raise
    extra = sorted(set(weights) - probe.read)
    if extra:
        raise ValueError(f"weights has {len(extra)} names the model does not have, e.g. {extra[:3]}")


def swap_weights(built, update: PreparedUpdate) -> float:
    """Engine thread, between steps: new weights in, transforms re-applied, prefix cache reset. Returns seconds.
    The old weights and the transforms' transients go back to the OS as they are freed (runner/cpu_memory.py)."""
    with loading_scope(keep_after=getattr(built.config, "tune_malloc", False) and built.device.type == "cpu"):
        return _swap_weights(built, update)


def _swap_weights(built, update: PreparedUpdate) -> float:
    start = time.perf_counter()
    model = built.core.runner.model
    # A partial update unpacks only the modules it writes (reading a prepacked weight back is a GEMM per module).
    only = _modules_written(model, update.weights) if update.partial else None
    transforms = _revert(built, model, only)
    changed = None  # every parameter
    if update.partial:
        changed = write_partial(model, update.weights)
        if any(name.startswith("lm_head.") for name in changed):  # (a tied head changes with the embedding)
            built.head_source = None
    else:
        model.load_weights(update.weights)
        built.head_source = update.source if update.source is not None and update.source.endswith(".gguf") else None
    model.to(built.device)
    _reapply(built, model, transforms, changed, update.source)
    built.core.reset_prefix_cache()
    update.weights = {}  # the model holds them now
    return time.perf_counter() - start


def _modules_written(model, weights: dict) -> set[str]:
    """Qualified names of the modules whose parameters a partial update writes (tied ones included)."""
    slots = model.checkpoint_slots()
    return {slot.param.rpartition(".")[0] for name in weights for slot in slots[name]}


def _revert(built, model, only: set[str] | None = None) -> list | None:
    """Undo the load-time transforms (the `invariant` branch's ordered, reversible list), for every module or at
    least those named in `only`. Without that list, only a model with no transforms applied can be updated."""
    applied = getattr(built, "weight_transforms", None)
    if applied is not None:
        from plait.runner.weight_transforms import revert_transforms

        revert_transforms(model, applied, only)
        return applied
    from plait.runner.packed_linear import PackedLinear

    if any(isinstance(m, PackedLinear) or hasattr(m, "q4") for m in model.modules()):
        raise ValueError("this engine's weights are prepacked / 4-bit and this build cannot undo that: update "
                         "weights with packed_weights=False, native_q4=False")
    return None


def _reapply(built, model, applied: list | None, changed: frozenset[str] | None = None,
             source: str | None = None) -> None:
    if applied is None:
        return
    from plait.runner.weight_transforms import TransformContext, apply_transforms

    # An update from a GGUF file brings its own 4-bit blocks: the 4-bit path reads them, as a fresh engine on that
    # file would. Otherwise the load-time file's blocks are the old weights and the 4-bit path quantizes the new
    # dense ones (runner/q4_quantize.py; in bf16 a block can land one rounding step from a file's own).
    gguf = source if source is not None and source.endswith(".gguf") else None
    ctx = TransformContext(built.dtype, built.device, gguf, getattr(built.config, "batch_invariant", False),
                           getattr(built.config, "native_kernels", False), requantize=gguf is None,
                           changed=changed, head_source=getattr(built, "head_source", None))
    candidates = getattr(built, "transform_candidates", None) or applied
    built.weight_transforms = apply_transforms(model, list(candidates), ctx)


class WeightUpdater:
    """The engine thread's side of `AsyncLLM.update_weights`: one update at a time, in the order queued."""

    def __init__(self, built, abort_all: Callable[[], int]) -> None:
        self.built = built
        self.version: Version | None = None
        self.abort_all = abort_all  # ends every in-flight request (delivering its outputs); returns how many
        self.pending: tuple[PreparedUpdate, Future] | None = None  # a 'drain' update waiting for idle
        self.held: list[tuple] = []  # 'add' commands that arrived while draining

    @property
    def draining(self) -> bool:
        return self.pending is not None

    def start(self, update: PreparedUpdate, future: Future) -> None:
        if update.info.mode == "abort":
            update.info.aborted = self.abort_all()
        if update.info.mode == "drain":
            self.pending = (update, future)
            self.maybe_finish(idle=not self.built.core.has_unfinished())
        else:
            self._swap(update, future)

    def maybe_finish(self, idle: bool) -> list[tuple]:
        """After a step: swap a draining update once the engine is idle; returns the held 'add' commands."""
        if self.pending is None or not idle:
            return []
        update, future = self.pending
        self.pending = None
        self._swap(update, future)
        held, self.held = self.held, []
        return held

    def fail_pending(self, exc: BaseException) -> None:
        """The engine stops: a 'drain' update still waiting will never happen; its caller must hear so."""
        if self.pending is not None:
            self.pending[1].set_exception(exc)
            self.pending = None

    def _swap(self, update: PreparedUpdate, future: Future) -> None:
        try:
            update.info.wait_seconds = time.perf_counter() - update.queued_at
            update.info.swap_seconds = swap_weights(self.built, update)
            self.version = update.info.version
        except BaseException as exc:  # noqa: BLE001 - the caller hears of it; the engine thread goes on
            future.set_exception(exc)
            raise
        future.set_result(update.info)
