"""KVPayload: one request's prompt KV in transit between a prefill and a decode engine.

The K/V of each layer travels as raw bytes (a flat uint8 numpy array), so every connector moves exactly the
cache's own bits whatever the dtype (numpy has no bfloat16), and Ray and sockets pass numpy buffers without
pickling tensor objects. Layer l's array is the engine cache's `[2 (K, V), kv_heads, num_tokens, head_dim]`
slice for the carried tokens, in that order.

What is carried: the prompt's leading full KV blocks that the decode engine will hit in its prefix cache, i.e.
`num_tokens = block_size * floor((prompt_len - 1) / block_size)` tokens when the prefill engine still had them
all cached. The decode engine computes the rest (1 to block_size tokens: the last prompt token always, since
its logits give the first token). So `nbytes = 2 * layers * kv_heads * head_dim * num_tokens * dtype size`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class KVPayload:
    prompt_token_ids: list[int]
    num_tokens: int  # leading prompt tokens whose KV is carried (a multiple of block_size)
    block_size: int
    dtype: str  # the cache's torch dtype name without "torch.", e.g. "float32", "bfloat16"
    num_kv_heads: int
    head_dim: int
    layers: list[np.ndarray] = field(default_factory=list, repr=False)  # one flat uint8 array per layer
    first_token: int | None = None  # the prefill engine's first sampled token, when it sampled one

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.layers)

    def layer_shape(self) -> tuple[int, int, int, int]:
        return (2, self.num_kv_heads, self.num_tokens, self.head_dim)

    def header(self) -> dict:
        """Everything but the layer bytes (what a byte-stream connector sends ahead of them)."""
        return {"prompt_token_ids": self.prompt_token_ids, "num_tokens": self.num_tokens,
                "block_size": self.block_size, "dtype": self.dtype, "num_kv_heads": self.num_kv_heads,
                "head_dim": self.head_dim, "num_layers": self.num_layers, "first_token": self.first_token,
                "layer_nbytes": [int(a.nbytes) for a in self.layers]}

    @staticmethod
    def from_header(header: dict, layers: list[np.ndarray]) -> "KVPayload":
        return KVPayload(list(header["prompt_token_ids"]), header["num_tokens"], header["block_size"],
                         header["dtype"], header["num_kv_heads"], header["head_dim"], layers,
                         header["first_token"])
