"""The one small surface that the HTTP server, benchmarks and strategies use to talk to an engine.

`AsyncLLM` implements it in-process; a router over several replicas (plait.distributed) implements it too. Code
written against `EngineClient` never reaches into an engine's scheduler, KV cache or runner.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, runtime_checkable

from plait.outputs import RequestOutput
from plait.params import SamplingParams


@runtime_checkable
class EngineClient(Protocol):
    tokenizer: Any  # encode / decode / apply_chat_template / vocab_size

    @property
    def is_running(self) -> bool: ...

    @property
    def error(self) -> BaseException | None: ...

    @property
    def num_pending(self) -> int:
        """Requests submitted and not yet finished."""

    @property
    def max_model_len(self) -> int:
        """The longest prompt + output the model takes."""

    @property
    def max_seq_tokens(self) -> int:
        """The longest sequence the engine can ever hold (the context length or the whole KV pool)."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, prompt: Any) -> tuple[str | None, list[int]]:
        """A prompt (text or token ids) -> (text or None, token ids); ValueError for anything else."""

    def generate(self, prompt: Any, sampling_params: SamplingParams | None = None,
                 request_id: str | None = None, output_kind: str = "delta") -> AsyncIterator[RequestOutput]:
        """Submit at once (ValueError for bad input, QueueFullError when full) and stream the outputs."""

    async def score(self, prompt: Any, continuation: Any) -> Any:
        """A ScoreOutput: the log-probability of `continuation` given `prompt`, per token and summed."""

    async def abort(self, request_id: str, sample_index: int | None = None) -> None:
        """End the request, or only its sample `sample_index` (its siblings go on)."""

    def abort_nowait(self, request_id: str, sample_index: int | None = None) -> None: ...

    def stats(self) -> Any:
        """An EngineStats (running, waiting, KV usage, prefix-cache and token counters)."""

    def reset_prefix_cache(self) -> None: ...
