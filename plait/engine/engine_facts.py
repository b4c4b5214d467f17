"""The limits and the prompt encoding an engine client reports (plait/engine/protocol.py), read from a local
EngineCore, or from the validator engine a router keeps for checking requests: `self.engine` and `self.tokenizer`.
Shared by AsyncLLM, the Ray router and the prefill/decode clients."""

from __future__ import annotations

from typing import Any

from plait.engine.prompts import encode_prompt


class EngineFacts:
    engine: Any  # an EngineCore (or one built only to validate), with .scheduler and .vocab_size
    tokenizer: Any

    @property
    def max_model_len(self) -> int:
        return self.engine.scheduler.max_model_len

    @property
    def max_seq_tokens(self) -> int:
        kv = self.engine.scheduler.kv
        return min(self.max_model_len, kv.num_blocks * kv.block_size)

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    def encode(self, prompt: Any) -> tuple[str | None, list[int]]:
        return encode_prompt(self.tokenizer, prompt)
