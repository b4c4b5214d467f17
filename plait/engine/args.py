"""Engine settings as command-line flags: shared by `plait generate|chat|serve` and every `plait bench` command."""

from __future__ import annotations

import argparse

from plait.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    d = EngineConfig()
    g = parser.add_argument_group("engine")
    g.add_argument("--model", "-m", default=None,
                   help="a .gguf file, a HuggingFace model directory, 'smollm2-135m' (the default) or "
                        "'gemma3-270m'")
    g.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations; auto = bf16 where the CPU/GPU supports it, else fp32")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    g.add_argument("--kv-cache-memory", default=None,
                   help="bytes for the KV cache pool, e.g. 2GiB (default: from free memory, at most 1 GiB)")
    g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV block")
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="token budget of one step = chunked prefill size (default: 2048 for generate and "
                        "offline benchmarks, 512 for serve and chat, which favour steady streaming)")
    g.add_argument("--max-model-len", type=int, default=None, help="context length cap")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable the automatic prefix cache")
    g.add_argument("--kv-pool-policy", default=d.kv_pool_policy, choices=["reuse", "fill"],
                   help="reuse: new KV goes into freed blocks before never-used ones, the prefix cache keeping "
                        "as many freed blocks as requests hold (at least 1/8 of the pool), so resident memory "
                        "follows use; fill: never-used blocks first, freed KV stays cached longest and the whole "
                        "pool becomes resident")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--no-native-q4", action="store_true",
                   help="always use dense weights (by default, CPU bf16 engines read a Q4_0/Q4_1 GGUF's 4-bit "
                        "weights directly: every step on AVX512-VNNI CPUs, steps of <= 8 tokens elsewhere; faster, "
                        "slightly different numerics)")
    g.add_argument("--no-q8-weights", action="store_true",
                   help="read every weight densely (by default a GGUF's Q8_0 LM head is read as its int8 blocks: "
                        "in fp32 at every step, same values, 1/4 of the traffic; in bf16 at steps of 1-2 rows, the "
                        "file's exact values, half the traffic)")
    g.add_argument("--batch-invariant", action="store_true",
                   help="bitwise batch-invariant numerics: a request's output never depends on what else is in "
                        "its step (slower at batch 1; docs/batch_invariance.md)")
    g.add_argument("--no-native-kernels", action="store_true",
                   help="run attention in PyTorch instead of plait's C kernel (which is compiled on first "
                        "use with the machine's C compiler; also PLAIT_NATIVE_KERNELS=0)")
    g.add_argument("--no-fused-layers", action="store_true",
                   help="run each decoder layer module by module (by default, on the VNNI 4-bit path a Llama "
                        "layer is one native call of the same kernels; bit-identical, fewer round trips)")
    g.add_argument("--no-shared-prefix-attention", action="store_true",
                   help="decodes sharing leading KV blocks each read them alone (by default they attend to the "
                        "shared blocks together, reading that KV once: Hydragen; in bf16 on a CPU with "
                        "AVX512-BF16 only from 1,024 shared tokens, below which it measured slower)")
    g.add_argument("--shared-prefix-attention", action="store_true",
                   help="attend to any shared run of 2 KV blocks or more together, also where the default would not")
    g.add_argument("--no-prefix-grouping", action="store_true",
                   help="queue an offline batch in the given order (by default prompts sharing a prefix are "
                        "queued together, so each shared prefix is computed once)")
    g.add_argument("--no-fork-samples", action="store_true",
                   help="n > 1: every sample computes the prompt's partial last block itself (by default the "
                        "others fork from the first after its prompt, copy-on-write: docs/forks.md)")
    g.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='speculative decoding, vLLM\'s dict as JSON, e.g. \'{"method": "ngram", '
                        '"num_speculative_tokens": 4}\' (methods: ngram, suffix; docs/speculative_decoding.md)')
    g.add_argument("--config", default=None,
                   help="JSON file of engine settings (e.g. the best point `plait bench sweep` wrote); flags given "
                        "on the command line win")


def engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(model=args.model, dtype=args.dtype, device=args.device, kv_cache_memory=args.kv_cache_memory,
                  block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                  enable_prefix_caching=not args.no_prefix_caching,
                  kv_pool_policy=getattr(args, "kv_pool_policy", "reuse"), num_threads=args.threads,
                  native_q4=not getattr(args, "no_native_q4", False),
                  q8_weights=not getattr(args, "no_q8_weights", False),
                  native_kernels=not getattr(args, "no_native_kernels", False),
                  fused_layers=not getattr(args, "no_fused_layers", False),
                  batch_invariant=getattr(args, "batch_invariant", False),
                  shared_prefix_attention=(False if getattr(args, "no_shared_prefix_attention", False) else
                                           True if getattr(args, "shared_prefix_attention", False) else None),
                  prefix_grouping=not getattr(args, "no_prefix_grouping", False),
                  fork_samples=not getattr(args, "no_fork_samples", False),
                  speculative_config=getattr(args, "speculative_config", None),
                  tune_malloc=True)  # plait's commands own their process (see EngineConfig.tune_malloc)
    if getattr(args, "config", None):
        kwargs = _merge_config_file(kwargs, args.config)
    return kwargs


def _merge_config_file(kwargs: dict, path: str) -> dict:
    """Settings from the file fill in whatever the command line left at its default."""
    import dataclasses
    import json

    try:
        with open(path) as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--config {path}: cannot read a JSON object ({exc})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {path}: expected a JSON object of engine settings")
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}  # "_sweep": provenance, not a setting
    defaults = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"--config {path}: unknown engine settings {unknown}; known: {sorted(defaults)}")
    merged = dict(kwargs)
    for key, value in settings.items():
        if merged.get(key) == defaults[key]:
            merged[key] = value
    return merged
