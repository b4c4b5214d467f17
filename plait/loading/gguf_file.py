"""Load a GGUF file (llama.cpp's format) into plait's model description.

A GGUF file holds three things: metadata (architecture numbers, tokenizer vocabulary), a table of
tensors, and the tensor bytes, often quantized. We return what the rest of plait understands:
a `ModelConfig`, float tensors under HuggingFace Llama names in HF layout, and a `Tokenizer`.

Why our own header parser rather than `gguf.GGUFReader`: the reader builds a numpy view per array
element, so opening the default model (98k vocabulary and merge strings) takes ~2.3 s on this
machine; walking the header with `struct` takes ~0.06 s. The tensor bytes are memory-mapped and
read only by dequantization. We still use the `gguf` package for its type constants and its numpy
dequantizers, with faster kernels of our own for the common types (see `dequantize`).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plait.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from plait.loading.tokenizer import Tokenizer

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # llama.cpp's default when `general.alignment` is absent

# GGUF metadata value types (gguf.GGUFValueType) that have a fixed width, as struct formats.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# GGUF architecture -> (HF class name as ModelConfig.from_hf spells it, q/k bias, q/k norm).
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", False, False),
    "qwen2": ("Qwen2ForCausalLM", True, False),
    "qwen3": ("Qwen3ForCausalLM", False, True),
    "gemma3": ("Gemma3ForCausalLM", False, True),
}
# llama.cpp's converter permutes q/k rows for these (interleaved RoPE); we undo it.
_PERMUTED_QK_ARCHS = {"llama"}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 3 has four norms per layer: llama.cpp's ffn_norm is the one before the MLP there.
_ARCH_LAYER_NAMES = {
    "gemma3": {**_LAYER_NAMES, "ffn_norm": "pre_feedforward_layernorm",
               "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
}
# llama.cpp's converter stores Gemma's norm weights as 1 + w; HF names carry w (HF's convention), so we subtract.
_PLUS_ONE_NORM_ARCHS = {"gemma3"}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")


@dataclass
class GGUFTensor:
    """One tensor as stored: HF-order shape (slowest dimension first) and its raw bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data: np.ndarray  # uint8 view into the file mapping


@dataclass
class GGUFFile:
    """Parsed metadata and the tensor table of a GGUF file; tensor bytes stay memory-mapped."""

    path: Path
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header. Cheap: tensor data is mapped, not read."""
    from gguf import GGML_QUANT_SIZES

    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buf[:4] != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF').")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"{path} is GGUF version {version}; plait reads versions 2 and 3 (little-endian).")
    reader = _HeaderReader(buf, 24)
    metadata = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.unpack("<I"))

    infos = []
    for _ in range(n_tensors):
        name = reader.string()
        n_dims = reader.unpack("<I")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, reader.pos)
        reader.pos += 8 * n_dims
        ggml_type, offset = reader.unpack("<I"), reader.unpack("<Q")
        infos.append((name, tuple(reversed(dims)), ggml_type, offset))  # GGUF lists the fastest dim first

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    data_start = -(-reader.pos // alignment) * alignment
    raw = np.frombuffer(buf, dtype=np.uint8)
    tensors = []
    for name, shape, ggml_type, offset in infos:
        if ggml_type not in GGML_QUANT_SIZES:
            raise NotImplementedError(f"{path}: tensor {name} has unknown ggml type {ggml_type}.")
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        nbytes = int(np.prod(shape)) // block * block_bytes
        start = data_start + offset
        tensors.append(GGUFTensor(name, shape, ggml_type, raw[start : start + nbytes]))
    return GGUFFile(path, metadata, tensors)


class _HeaderReader:
    """Sequential little-endian reader over the header bytes."""

    def __init__(self, buf: mmap.mmap, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        (length,) = struct.unpack_from("<Q", self.buf, self.pos)
        start = self.pos + 8
        self.pos = start + length
        return self.buf[start : self.pos].decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.unpack("<" + _SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR_FORMATS:
                fmt = "<" + _SCALAR_FORMATS[etype]
                values = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos)
                self.pos += values.nbytes
                return values.tolist()
            return [self.value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF metadata value type {vtype}")


# --------------------------------------------------------------------------------------------- dequantize


def dequantize(tensor: GGUFTensor) -> np.ndarray:
    """Raw GGUF bytes -> a new float32 array of `tensor.shape` (never a view of the file).

    Q8_0, Q4_0 and Q4_1 have our own numpy kernels (the default model is Q4_1 + Q8_0): they match
    gguf.quants bit for bit and are ~5x faster, because bit operations run over the contiguous block
    array rather than narrow strided slices. Numpy rather than torch on purpose: single-threaded code
    keeps its speed when the two cores are busy, where torch's thread pool slowed loading tenfold.
    Every other type goes through gguf.quants.
    """
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    data, t = tensor.data, tensor.ggml_type
    if t == Q.F32:
        out = data.view(np.float32).copy()
    elif t == Q.F16:
        out = data.view(np.float16).astype(np.float32)
    elif t == Q.Q8_0:  # block: f16 scale, 32 x int8; value = q * d
        blocks = data.reshape(-1, 34)
        out = blocks[:, 2:].view(np.int8).astype(np.float32)
        out *= _f16_columns(blocks, 1)
    elif t == Q.Q4_0:  # block: f16 scale, 32 nibbles; value = (q - 8) * d
        blocks = data.reshape(-1, 18)
        out = _nibbles(blocks, 2)
        out -= 8.0
        out *= _f16_columns(blocks, 1)
    elif t == Q.Q4_1:  # block: f16 scale, f16 min, 32 nibbles; value = q * d + m
        blocks = data.reshape(-1, 20)
        dm = _f16_columns(blocks, 2)
        out = _nibbles(blocks, 4)
        out *= dm[:, :1]
        out += dm[:, 1:]
    else:  # BF16, K-quants and the rest
        try:
            out = quants.dequantize(data, Q(t))
        except NotImplementedError as e:
            raise NotImplementedError(f"tensor {tensor.name}: cannot dequantize ggml type {Q(t).name}") from e
    return out.reshape(tensor.shape)


def _f16_columns(blocks: np.ndarray, count: int) -> np.ndarray:
    """The first `count` float16 values of each block, as float32 [n_blocks, count]."""
    return np.ascontiguousarray(blocks[:, : 2 * count]).view(np.float16).astype(np.float32)


def _nibbles(blocks: np.ndarray, start: int) -> np.ndarray:
    """The 16 bytes at `start` of each block as 32 floats: all low nibbles, then all high nibbles."""
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    out[:, :16] = (blocks & 0x0F)[:, start : start + 16]
    out[:, 16:] = (blocks >> 4)[:, start : start + 16]
    return out


# ----------------------------------------------------------------------------------------------- model


def config_from_metadata(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """Build a ModelConfig from `{arch}.*` metadata keys (llama.cpp's names) and the tensor shapes."""
    arch = meta["general.architecture"]
    if arch not in _ARCHITECTURES:
        raise NotImplementedError(
            f"GGUF architecture {arch!r} is not supported; plait loads {sorted(_ARCHITECTURES)}."
        )
    if "rope_freqs.weight" in shapes:
        raise NotImplementedError(
            "this GGUF stores Llama-3-style RoPE scaling as a rope_freqs tensor, which plait does not read; "
            "load the HuggingFace directory of the model instead."
        )
    hf_arch, bias, qk_norm = _ARCHITECTURES[arch]

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden, heads = get("embedding_length"), get("attention.head_count")
    # the embedding's rows are the truth (llama.cpp often omits {arch}.vocab_size)
    vocab = shapes["token_embd.weight"][0] if "token_embd.weight" in shapes else (
        get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", ())))
    extra: dict[str, Any] = {}
    if arch == "gemma3":
        from plait.loading.gemma3_config import gemma3_fields_from_gguf

        extra = gemma3_fields_from_gguf(meta, get("block_count"), hidden, heads,
                                        get("attention.key_length") or hidden // heads)
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=get("feed_forward_length"),
        num_layers=get("block_count"),
        num_heads=heads,
        num_kv_heads=get("attention.head_count_kv") or heads,
        head_dim=get("attention.key_length") or hidden // heads,
        max_position=get("context_length", 8192),
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=get("rope.freq_base", 10000.0),
        rope_scaling=_rope_scaling(get),
        tie_word_embeddings="output.weight" not in shapes,
        attention_bias=bias or "blk.0.attn_q.bias" in shapes,
        qk_norm=qk_norm or "blk.0.attn_q_norm.weight" in shapes,
        architecture=hf_arch,
        **extra,
    )


def _rope_scaling(get: Any) -> dict | None:
    """`{arch}.rope.scaling.*` -> an HF-style rope_scaling dict (None for plain RoPE)."""
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind in (None, "none") or not factor or factor == 1.0:
        return None
    scaling = {"rope_type": kind, "factor": float(factor)}
    if get("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    return scaling


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for tensors plait ignores."""
    if m := _LAYER_RE.match(gguf_name):
        layer, part, kind = m.groups()
        names = _ARCH_LAYER_NAMES.get(arch, _LAYER_NAMES)
        return f"model.layers.{layer}.{names[part]}.{kind}" if part in names else None
    if (m := _GLOBAL_RE.match(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation, back to HF's rotate-half RoPE layout.

    The converter did `w.reshape(n_head, 2, hd // 2, *rest).swapaxes(1, 2)`, interleaving the two
    halves of each head; here we take them apart again.
    """
    rest = w.shape[1:]
    half = w.shape[0] // n_heads // 2
    return np.ascontiguousarray(w.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(w.shape))


def load_gguf(path: str | Path, dtype: "torch.dtype | None" = None) -> tuple[ModelConfig, dict, "Tokenizer"]:
    """GGUF file -> (config, HF-named weights in `dtype` (float32 by default), tokenizer)."""
    import torch

    from plait.loading.tokenizer import Tokenizer

    dtype = dtype or torch.float32
    gf = read_gguf(path)
    config = config_from_metadata(gf.metadata, {t.name: t.shape for t in gf.tensors})
    tokenizer = Tokenizer.from_gguf_metadata(gf.metadata)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_ids = list(tokenizer.eos_token_ids)

    permuted = gf.architecture in _PERMUTED_QK_ARCHS
    plus_one = gf.architecture in _PLUS_ONE_NORM_ARCHS
    weights: dict[str, torch.Tensor] = {}
    for tensor in gf.tensors:
        name = hf_name(tensor.name, gf.architecture)
        if name is None:
            continue
        w = dequantize(tensor)
        if plus_one and name.endswith("norm.weight"):
            w -= 1.0
        if permuted and ".self_attn.q_proj." in name:
            w = unpermute_qk(w, config.num_heads)
        elif permuted and ".self_attn.k_proj." in name:
            w = unpermute_qk(w, config.num_kv_heads)
        weights[name] = torch.from_numpy(w).to(dtype)
    return config, weights, tokenizer


# ----------------------------------------------------------------------------------------------- 4-bit blocks


@dataclass
class Q4Blocks:
    """A Q4_0 / Q4_1 weight kept 4-bit: value = (q - 8) * scale + zero per group of 32 along the input dim.

    q: uint8 [out, in] in 0..15; scale, zero: float32 [out, in / 32]. Q4_1 (q * d + m) maps exactly with
    scale = d, zero = m + 8 d; Q4_0 ((q - 8) * d) with zero = 0.
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray

    GROUP = 32


def q4_blocks(tensor: GGUFTensor) -> Q4Blocks | None:
    """The 4-bit form of a Q4_0 / Q4_1 matrix, or None for any other type."""
    from gguf import GGMLQuantizationType as Q

    if tensor.ggml_type not in (Q.Q4_0, Q.Q4_1) or len(tensor.shape) != 2:
        return None
    rows, cols = tensor.shape
    if tensor.ggml_type == Q.Q4_0:
        blocks = tensor.data.reshape(-1, 18)
        scale = _f16_columns(blocks, 1)[:, 0]
        zero = np.zeros_like(scale)
        start = 2
    else:
        blocks = tensor.data.reshape(-1, 20)
        dm = _f16_columns(blocks, 2)
        scale, zero = dm[:, 0], dm[:, 1] + 8.0 * dm[:, 0]
        start = 4
    q = np.empty((blocks.shape[0], 32), dtype=np.uint8)
    q[:, :16] = (blocks & 0x0F)[:, start: start + 16]
    q[:, 16:] = (blocks >> 4)[:, start: start + 16]
    groups = cols // Q4Blocks.GROUP
    return Q4Blocks(q.reshape(rows, cols), scale.reshape(rows, groups), zero.reshape(rows, groups))


def load_q8_head(path: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The LM head's Q8_0 blocks as (int8 values [vocab, hidden], float32 scales [vocab, hidden / 32]): the file's
    `output.weight`, or the tied `token_embd.weight`; None when that tensor is not Q8_0."""
    from gguf import GGMLQuantizationType as Q

    tensors = {t.name: t for t in read_gguf(path).tensors}
    tensor = tensors.get("output.weight", tensors.get("token_embd.weight"))
    if tensor is None or tensor.ggml_type != Q.Q8_0 or len(tensor.shape) != 2:
        return None
    rows, cols = tensor.shape
    blocks = tensor.data.reshape(-1, 34)
    values = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).reshape(rows, cols)
    return values, _f16_columns(blocks, 1).reshape(rows, cols // 32)


def load_q4_blocks(path: str | Path) -> dict[str, Q4Blocks]:
    """HF-named 4-bit forms of every Q4_0 / Q4_1 matrix of a GGUF file (rows un-permuted like the weights)."""
    gf = read_gguf(path)
    config = config_from_metadata(gf.metadata, {t.name: t.shape for t in gf.tensors})
    permuted = gf.architecture in _PERMUTED_QK_ARCHS
    out: dict[str, Q4Blocks] = {}
    for tensor in gf.tensors:
        name = hf_name(tensor.name, gf.architecture)
        blocks = q4_blocks(tensor) if name is not None else None
        if blocks is None:
            continue
        heads = (config.num_heads if ".self_attn.q_proj." in name
                 else config.num_kv_heads if ".self_attn.k_proj." in name else None)
        if permuted and heads is not None:
            blocks = Q4Blocks(unpermute_qk(blocks.q, heads), unpermute_qk(blocks.scale, heads),
                              unpermute_qk(blocks.zero, heads))
        out[name] = blocks
    return out
