"""plait: batched and asynchronous LLM inference.

Public API: LLM (offline), AsyncLLM (streaming, background engine loop), BackgroundLLM (submit/poll from plain
threads), SamplingParams, RequestOutput.
Heavy modules (torch, the model) load on first use, so `import plait` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.outputs import CompletionOutput, Logprob, RequestOutput, ScoreOutput
from plait.params import SamplingParams

if TYPE_CHECKING:
    from plait.engine.async_llm import AsyncLLM
    from plait.engine.background import BackgroundLLM
    from plait.engine.llm import LLM

__all__ = ["LLM", "AsyncLLM", "BackgroundLLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob",
           "ScoreOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from plait.engine.llm import LLM

        return LLM
    if name == "AsyncLLM":
        from plait.engine.async_llm import AsyncLLM

        return AsyncLLM
    if name == "BackgroundLLM":
        from plait.engine.background import BackgroundLLM

        return BackgroundLLM
    raise AttributeError(f"module 'plait' has no attribute {name!r}")
