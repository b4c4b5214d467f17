"""Settings dataclasses, validated once where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Architecture of a decoder: the Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3) or Gemma 3."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF-style rope_scaling dict, e.g. {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    # "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}; None for plain RoPE.
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Gemma 3 (plait/models/gemma3.py); None for the Llama family. layer_types[i] is "sliding_attention" (attends
    # to the last `sliding_window` positions, RoPE base rope_local_theta) or "full_attention" (rope_theta).
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None  # attention scale = query_pre_attn_scalar ** -0.5
    final_logit_softcapping: float | None = None

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """Build from a HuggingFace config.json dict."""
        heads = cfg["num_attention_heads"]
        arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position=cfg.get("max_position_embeddings", 8192),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            rope_scaling=_rope_scaling(cfg),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", arch.startswith("Qwen2")),
            qk_norm=arch.startswith("Qwen3"),
            architecture=arch,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _rope_scaling(cfg: dict) -> dict | None:
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return None if kind == "default" else dict(scaling, rope_type=kind)


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # None: the model's context length
    # n > 1: the other samples fork from the first after its prompt (copy-on-write KV, first tokens sampled from
    # its logits) instead of each computing the prompt's partial last block. Off only to compare (tests).
    fork_samples: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


def parse_memory(value: int | float | str | None) -> int | None:
    """'2GiB', '512MiB', '1.5e9' or a number of bytes -> bytes."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = value.strip().lower().replace(" ", "")
    for suffix, scale in (("gib", 2**30), ("mib", 2**20), ("kib", 2**10), ("gb", 10**9), ("mb", 10**6),
                          ("kb", 10**3), ("g", 2**30), ("m", 2**20), ("b", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(float(text))


OFFLINE_TOKEN_BUDGET = 2048
ONLINE_TOKEN_BUDGET = 512


@dataclass
class EngineConfig:
    """Everything `LLM(...)`, `AsyncLLM(...)` and `plait serve|generate` accept besides the model."""

    model: str | None = None  # None: the default model (smollm2-135m)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    kv_cache_memory: int | str | None = None  # bytes, or "2GiB"; None: sized from free memory
    block_size: int = 16
    max_num_seqs: int = 128
    # Token budget of one step (= chunked-prefill size). None picks by use: 2048 for offline LLM (throughput:
    # measured 1.3x faster than 512 on 64 x 128/128 here), 512 for AsyncLLM / the server (a 2048-token step
    # stalls every running stream for ~2 s on a 2-core CPU).
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    # Which free KV block a new one comes from (plait/cache/block_pool.py). "reuse": freed blocks before blocks
    # never used, with the prefix cache keeping as many freed blocks as requests hold (at least 1/8 of the pool),
    # so resident memory follows use. "fill": never-used blocks first, freed KV stays cached longest, and the
    # whole pool ends up resident.
    kv_pool_policy: str = "reuse"
    num_threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    packed_weights: bool = True  # CPU bf16: prepack linear weights for oneDNN (bit-identical, faster)
    # CPU bf16 with a Q4_0/Q4_1 GGUF: the layers run the file's 4-bit weights (runner/q4_linear.py): every step
    # through plait's VNNI kernel where the CPU has AVX512-VNNI (batch-invariant), else steps of <= 8 tokens.
    native_q4: bool = True
    # CPU with native kernels and a GGUF whose LM head is Q8_0 (both shipped models): fp32 reads the head's int8
    # blocks at every step (1/4 of the fp32 read; batch-invariant); bf16 at steps of 1-2 rows (half the bf16 read;
    # not under batch_invariant). runner/q8_linear.py.
    q8_weights: bool = True
    # CPU: attention through plait's C kernel (runner/native), compiled on first use with the machine's C
    # compiler; without one, or when off, the PyTorch path runs (same results within float rounding).
    native_kernels: bool = True
    # CPU bf16 on the VNNI 4-bit path: each Llama decoder layer runs as one native call (runner/fused_layer.py):
    # the same kernels as the module-by-module path, bit-identical, without ~8 Python round trips per layer.
    fused_layers: bool = True
    # Raise glibc's mmap/trim thresholds so each step's large temporaries are reused instead of page-faulted
    # afresh (runner/cpu_memory.py). It changes the allocator for the whole process, so a library caller opts
    # in; plait's own commands (generate, chat, serve, bench), which own their process, turn it on.
    tune_malloc: bool = False
    # Bitwise batch-invariant numerics: a request's logits are the same alone, in any batch, after a prefix-cache
    # hit or a preemption (fp32 linears through oneDNN; the 4-bit path only through its VNNI kernel; CPU with the
    # C kernels only). Off by default: it costs batch-1 speed (docs/batch_invariance.md).
    batch_invariant: bool = False
    # Decodes that share leading KV blocks attend to them together, reading that KV once (runner/shared_prefix.py).
    # None: from a shared run where it pays (runner/shared_prefix.py's default_min_shared_blocks: 2 blocks; 1,024
    # tokens for bf16 on a CPU with AVX512-BF16); True: any shared run of 2 blocks or more.
    shared_prefix_attention: bool | None = None
    # LLM.generate queues a batch grouped by shared prefix (engine/prefix_order.py), not in the caller's order.
    prefix_grouping: bool = True
    # n > 1: the other samples fork from the first after its prompt, copy-on-write (docs/forks.md); off, each
    # sample computes the prompt's partial last block itself. Off only to compare.
    fork_samples: bool = True
    # Speculative decoding, vLLM's dict: {"method": "ngram" | "suffix", "num_speculative_tokens": 4, ...}
    # (plait/spec/config.py; JSON text from the CLI). Greedy outputs stay the same; sampling stays exact.
    speculative_config: Any = None

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_pool_policy not in ("reuse", "fill"):
            raise ValueError(f"kv_pool_policy must be one of reuse, fill; got {self.kv_pool_policy!r}")
        self.kv_cache_memory = parse_memory(self.kv_cache_memory)
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be > 0 bytes, got {self.kv_cache_memory}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be an integer >= 2 (a prompt token and an output token) or None "
                             f"for the model's context length, got {self.max_model_len!r}")
        SchedulerConfig(self.max_num_seqs, self.token_budget(offline=False))  # validates both
        from plait.spec.config import SpeculativeConfig

        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)

    def token_budget(self, offline: bool) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return OFFLINE_TOKEN_BUDGET if offline else ONLINE_TOKEN_BUDGET
