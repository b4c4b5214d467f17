"""Assembles an EngineCore: load weights, pick dtype and device, size the KV pool."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from plait.cache.kv_manager import KVCacheManager
from plait.config import EngineConfig, ModelConfig, SchedulerConfig
from plait.core.engine_core import EngineCore
from plait.core.scheduler import Scheduler
from plait.models import build_model
from plait.runner.attention import KVCache
from plait.runner.cpu_memory import loading_scope
from plait.runner.model_runner import ModelRunner
from plait.runner.shared_prefix import MIN_SHARED_BLOCKS, default_min_shared_blocks
from plait.runner.invariance import check_batch_invariant
from plait.runner.weight_transforms import TransformContext, WeightTransform, apply_transforms, default_transforms
from plait.sampling.structured_compiler import GrammarCompiler
from plait.spec.build import build_drafter
from plait.spec.speculator import Speculator

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
# The default pool is capped: zero-filling a huge pool costs start-up time and most workloads need far less.
_DEFAULT_KV_CAP = 1 << 30


@dataclass
class BuiltEngine:
    core: EngineCore
    tokenizer: object
    model_config: ModelConfig
    config: EngineConfig
    dtype: torch.dtype
    device: torch.device
    load_seconds: float
    generation_defaults: dict
    weight_transforms: list[WeightTransform] = field(default_factory=list)  # applied, in order
    head_source: str | None = None  # the GGUF whose LM-head blocks the head holds (TransformContext.head_source)
    # Every transform this engine may use; a weight update re-applies those that apply then (one that did not at
    # load, or after an earlier update, may apply again: the Q8 head after an update from a GGUF file).
    transform_candidates: list[WeightTransform] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    # bf16 only where the CPU has native bf16 matmuls (AVX-512 BF16 / AMX); emulated bf16 is slower than fp32.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def build_engine(config: EngineConfig, model_config: ModelConfig | None = None,
                 weights: dict[str, torch.Tensor] | None = None, tokenizer=None,
                 offline: bool = False, draft: tuple[ModelConfig, dict] | None = None) -> BuiltEngine:
    """Load `config.model` (or use the given config/weights/tokenizer, as tests do) and wire the engine.
    `offline` picks the throughput-oriented default token budget (see EngineConfig.max_num_batched_tokens);
    `draft`: a draft model's config and weights for speculative_config method 'draft_model' (tests)."""
    # Loading's transients (dequantized and repacked copies) go back to the OS as they are freed; only then, if
    # asked, glibc's thresholds are raised (raised during loading, the transients would stay resident between
    # live weights: measured 833 against 619 MiB after loading the default model). runner/cpu_memory.py.
    with loading_scope(keep_after=config.tune_malloc and pick_device(config.device).type == "cpu"):
        return _build_engine(config, model_config, weights, tokenizer, offline, draft)


def _build_engine(config: EngineConfig, model_config: ModelConfig | None, weights: dict[str, torch.Tensor] | None,
                  tokenizer, offline: bool, draft: tuple[ModelConfig, dict] | None) -> BuiltEngine:
    start = time.perf_counter()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
    generation_defaults: dict = {}
    dtype = pick_dtype(config.dtype, device)
    source = None
    if model_config is None:
        from plait.loading import load_model

        loaded = load_model(config.model, dtype=dtype)
        model_config, weights, tokenizer = loaded.config, loaded.weights, loaded.tokenizer
        generation_defaults = loaded.generation_defaults
        source = loaded.source
        del loaded  # `weights` must be the last reference to the loaded tensors: they go once the model has them

    max_model_len = min(config.max_model_len or model_config.max_position, model_config.max_position)
    model = build_model(model_config, dtype)
    model.load_weights(weights)
    model.to(device).eval()
    del weights
    transforms = default_transforms(config.packed_weights or config.batch_invariant, config.native_q4,
                                    exact_q8=config.q8_weights)
    applied = apply_transforms(model, transforms, TransformContext(dtype, device, source, config.batch_invariant,
                                                                   config.native_kernels, head_source=source))

    per_block = KVCache.bytes_per_block(model_config.num_layers, config.block_size, model_config.num_kv_heads,
                                        model_config.head_dim, dtype)
    budget = config.kv_cache_memory
    if budget is None:
        wanted = config.max_num_seqs * max_model_len // config.block_size * per_block
        budget = min(wanted, _DEFAULT_KV_CAP, _available_memory() // 8)
    num_blocks = max(1, budget // per_block)
    cache = KVCache(model_config.num_layers, num_blocks, config.block_size, model_config.num_kv_heads,
                    model_config.head_dim, dtype, device)

    eos = sorted(set(model_config.eos_token_ids) | set(getattr(tokenizer, "eos_token_ids", []) or []))
    kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching, config.kv_pool_policy)
    scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.token_budget(offline), max_model_len,
                                          fork_samples=config.fork_samples), kv, max_model_len)
    kernels = None
    if config.native_kernels and device.type == "cpu" and dtype in (torch.bfloat16, torch.float32):
        from plait.runner.native import load_kernels

        kernels = load_kernels()
        if kernels is not None:
            from plait.runner.fused_layer import use_fused_layers
            from plait.runner.native.modules import use_native_layers

            use_native_layers(model, kernels)
            if config.fused_layers:
                use_fused_layers(model, kernels)
    if config.batch_invariant:
        check_batch_invariant(model, dtype, device, kernels)
    # Shared-prefix attention merges partial softmaxes, so a row's rounding depends on who shares its prefix in
    # the step: batch-invariant numerics turn it off. It attends the shared run whole, so windowed models
    # (Gemma 3's local layers) run without it. By default (None) a group needs the shared run where it pays;
    # True shares any run of 2 blocks or more.
    runner = ModelRunner(model, cache, eos, device, kernels=kernels,
                         grammars=GrammarCompiler(tokenizer, model_config.vocab_size, eos) if tokenizer else None,
                         shared_prefix_attention=(config.shared_prefix_attention is not False
                                                  and not config.batch_invariant
                                                  and model_config.sliding_window is None),
                         shared_prefix_min_blocks=(default_min_shared_blocks(dtype, kernels, config.block_size)
                                                   if config.shared_prefix_attention is None else MIN_SHARED_BLOCKS))
    speculator = None
    if config.speculative_config is not None:
        speculator = Speculator(config.speculative_config, max_model_len)
        runner.drafter = build_drafter(config.speculative_config, model, cache, kernels, dtype, device,
                                       max_model_len, draft)
    core = EngineCore(scheduler, runner, tokenizer, eos, model_config.vocab_size, speculator)
    gguf = source if source is not None and source.endswith(".gguf") else None
    return BuiltEngine(core, tokenizer, model_config, config, dtype, device, time.perf_counter() - start,
                       generation_defaults, applied, gguf, transforms)


def describe(built: BuiltEngine) -> str:
    kv = built.core.scheduler.kv
    return (f"model {built.config.model or 'smollm2-135m'} loaded in {built.load_seconds:.2f} s "
            f"({built.dtype}, {built.device}, {torch.get_num_threads()} threads); KV pool {kv.num_blocks} blocks "
            f"x {kv.block_size} tokens; attention: {_attention_path(built)}; pid {os.getpid()}")


def _attention_path(built: BuiltEngine) -> str:
    if built.core.runner.kernels is not None:
        return "C kernel"
    if built.config.native_kernels and built.device.type == "cpu":
        from plait.runner.native import unavailable_reason

        return f"PyTorch ({unavailable_reason() or 'dtype has no kernel'})"
    return "PyTorch"
