"""plait's C kernels: compiled on first use with the machine's C compiler, cached, loaded with ctypes.

Why not a PyTorch C++ extension: compiling against torch's headers takes about a minute on two cores, and building
at install time would need torch inside pip's isolated build environment (a multi-gigabyte download). The kernels
take raw pointers, so a plain C shared library compiles in well under a second and needs nothing but `cc`.

The library lands in $PLAIT_CACHE/kernels/<hash of source, flags, compiler and CPU>/ so a change of any of them
rebuilds it. Without a compiler, or with PLAIT_NATIVE_KERNELS=0, `load_kernels()` returns None and callers keep
their PyTorch path; the reason is available from `unavailable_reason()`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SOURCES = ("paged_attention.c", "elementwise.c", "shared_prefix.c", "small_gemm.c", "q8_gemm.c", "q4_vnni.c",
           "decoder_layer.c", "q8_vnni.c")
HEADERS = ("common.h", "bf16_dot.h", "attention_args.h", "int8_rows.h")
# -ffast-math lets the loops reassociate sums and call glibc's vector expf. It is given to the compile step only:
# linking with it adds crtfastmath.o, which would switch the whole process to flush-to-zero when the library loads.
# -mno-recip: with -ffast-math gcc divides in vector loops by an approximate reciprocal plus a Newton step, whose
# bits differ between the 512-bit body, the 256-bit epilogue (rcp14 vs rcp) and a scalar divide, so on AVX-512 a
# row's SiLU depended on its place in the batch; true division gives every path the same bits.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-mno-recip", "-fopenmp", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp")
_ENV_SWITCH = "PLAIT_NATIVE_KERNELS"


class AttentionArgs(ctypes.Structure):
    """struct attention_args of paged_attention.c, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("q", "k_new", "v_new", "k_cache", "v_cache", "out", "slots", "tables", "rows", "lengths")]
    _fields_ += [(name, ctypes.c_int64) for name in ("q_stride", "k_stride", "v_stride", "head_stride")]
    _fields_ += [(name, ctypes.c_int32) for name in
                 ("tokens", "heads", "kv_heads", "head_dim", "block_size", "max_blocks")]
    _fields_ += [("scale", ctypes.c_float), ("window", ctypes.c_int32)]


class LayerArgs(ctypes.Structure):
    """struct layer_args of decoder_layer.c, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("hidden", "residual", "residual_out", "out", "input_norm", "post_norm", "qkv_w", "o_w", "gate_up_w",
                 "down_w", "cos", "signed_sin")]
    _fields_ += [(name, ctypes.c_int64) for name in ("tokens", "hidden_size", "intermediate_size")]
    _fields_ += [(name, ctypes.c_int32) for name in ("heads", "kv_heads", "head_dim")]
    _fields_ += [("eps", ctypes.c_float)]


class PrefixArgs(ctypes.Structure):
    """struct prefix_args of shared_prefix.c, field for field."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("q", "out", "k_cache", "v_cache", "tables", "members", "member_rows", "lengths", "group_starts",
                 "prefix_blocks")]
    _fields_ += [(name, ctypes.c_int64) for name in ("q_stride", "head_stride")]
    _fields_ += [(name, ctypes.c_int32) for name in
                 ("groups", "heads", "kv_heads", "head_dim", "block_size", "max_blocks", "tile")]
    _fields_ += [("scale", ctypes.c_float)]


@dataclass(frozen=True)
class Kernels:
    """The loaded library's entry points (ctypes functions with argument types set), per dtype suffix."""

    paged_attention: dict[str, ctypes._CFuncPtr]
    add_rms_norm: dict[str, ctypes._CFuncPtr]
    silu_mul: dict[str, ctypes._CFuncPtr]
    rope: dict[str, ctypes._CFuncPtr]
    shared_prefix: dict[str, ctypes._CFuncPtr]
    # fp32 linear for a few rows (small_gemm.c); returns -1 where the CPU lacks AVX2 + FMA
    small_linear_f32: ctypes._CFuncPtr | None = None
    # fp32 linear over Q8_0 int8 blocks (q8_gemm.c); returns -1 where the CPU lacks AVX2 + FMA
    q8_linear_f32: ctypes._CFuncPtr | None = None
    # bf16 linear over 4-bit Q4_0/Q4_1 weights in int8 arithmetic (q4_vnni.c); None where the CPU lacks AVX512-VNNI
    q4_vnni_linear_bf16: ctypes._CFuncPtr | None = None
    # the dense bf16 matrix back from those packed weights (q4_vnni.c); None without AVX512-VNNI
    q4_vnni_dequantize_bf16: ctypes._CFuncPtr | None = None
    # bf16 x Q8_0 weights in int8 arithmetic, fp32 out (q8_vnni.c: the LM head); None where the CPU lacks AVX512-VNNI
    q8_vnni_linear_bf16: ctypes._CFuncPtr | None = None
    # a whole Llama decoder layer over those 4-bit weights in one call (decoder_layer.c); None without AVX512-VNNI
    llama_layer_bf16: ctypes._CFuncPtr | None = None
    # The attention kernels compute bf16 scores with the CPU's bf16 dot-product instruction (AVX512-BF16).
    has_bf16_dot: bool = False


class KernelBuildError(RuntimeError):
    pass


def enabled() -> bool:
    return os.environ.get(_ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_fingerprint() -> str:
    """-march=native code is only valid on the CPU that built it: key the cache by the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _library_path(compiler: str) -> Path:
    from plait.loading.sources import default_cache_dir

    here = Path(__file__).parent
    digest = hashlib.blake2b(digest_size=10)
    for name in SOURCES + HEADERS:
        digest.update((here / name).read_bytes())
    digest.update(" ".join(COMPILE_FLAGS + LINK_FLAGS).encode())
    digest.update(compiler.encode())
    digest.update(_cpu_fingerprint().encode())
    return default_cache_dir() / "kernels" / digest.hexdigest() / "libplait_kernels.so"


def build(compiler: str) -> Path:
    """Compile the kernels unless a matching library is cached; returns its path."""
    target = _library_path(compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    # Build under a temporary name and rename: concurrent processes never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    objects = [tmp + f".{i}.o" for i in range(len(SOURCES))]
    steps = [[compiler, *COMPILE_FLAGS, "-c", str(here / src), "-o", obj] for src, obj in zip(SOURCES, objects)]
    steps.append([compiler, *LINK_FLAGS, *objects, "-o", tmp, "-lm"])
    try:
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise KernelBuildError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        for path in (tmp, *objects):
            if os.path.exists(path):
                os.unlink(path)
    return target


def _bind(lib: ctypes.CDLL) -> Kernels:
    p, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures = {
        "paged_attention": ([ctypes.POINTER(AttentionArgs)], ctypes.c_int),
        "add_rms_norm": ([p, p, p, p, p, i32, i32, f32], None),
        "silu_mul": ([p, p, i32, i32], None),
        "rope": ([p, ctypes.c_int64, p, p, i32, i32, i32], None),
        "shared_prefix": ([ctypes.POINTER(PrefixArgs)], ctypes.c_int),
    }
    bound = {}
    for name, (argtypes, restype) in signatures.items():
        bound[name] = {}
        for suffix in ("bf16", "f32"):
            fn = getattr(lib, f"plait_{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, restype
            bound[name][suffix] = fn
    small = lib.plait_small_linear_f32
    small.argtypes, small.restype = [p, p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    q8 = lib.plait_q8_linear_f32
    q8.argtypes, q8.restype = [p, p, p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    q4 = lib.plait_q4_vnni_linear_bf16
    q4.argtypes, q4.restype = [p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    q4d = lib.plait_q4_vnni_dequantize_bf16
    q4d.argtypes, q4d.restype = [p, p, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    q8v = lib.plait_q8_vnni_linear_bf16
    q8v.argtypes, q8v.restype = [p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64], ctypes.c_int
    layer = lib.plait_llama_layer_bf16
    layer.argtypes, layer.restype = [ctypes.POINTER(LayerArgs), ctypes.POINTER(AttentionArgs)], ctypes.c_int
    has_q4_vnni, has_bf16_dot = lib.plait_has_q4_vnni, lib.plait_has_bf16_dot
    has_q4_vnni.argtypes, has_q4_vnni.restype = [], ctypes.c_int
    has_bf16_dot.argtypes, has_bf16_dot.restype = [], ctypes.c_int
    return Kernels(**bound, small_linear_f32=small, q8_linear_f32=q8,
                   q4_vnni_linear_bf16=q4 if has_q4_vnni() else None,
                   q4_vnni_dequantize_bf16=q4d if has_q4_vnni() else None,
                   q8_vnni_linear_bf16=q8v if has_q4_vnni() else None,
                   llama_layer_bf16=layer if has_q4_vnni() else None, has_bf16_dot=bool(has_bf16_dot()))


@lru_cache(maxsize=1)
def _load() -> tuple[Kernels | None, str]:
    if not enabled():
        return None, f"{_ENV_SWITCH}=0"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    try:
        # torch first: its libgomp must be the one our OpenMP symbols resolve to.
        import torch  # noqa: F401

        return _bind(ctypes.CDLL(str(build(compiler)))), ""
    except (KernelBuildError, OSError, subprocess.SubprocessError, AttributeError) as exc:
        return None, f"kernel build or load failed: {exc}"


def load_kernels() -> Kernels | None:
    """The kernels, built on first call in this process; None where they cannot be built (see unavailable_reason)."""
    return _load()[0]


def unavailable_reason() -> str:
    return _load()[1]
