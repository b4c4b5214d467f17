"""One caller-visible stream out of the two workers' outputs.

The router keeps its own `RequestState` (the frontend's output processor: text, stop strings, logprobs, deltas)
and feeds it the workers' tokens as engine deltas: the prefill worker's first token, then the decode worker's
tokens. The decode worker computes the first token again (its logits come from the last prompt token, which it
computes itself); that repeat is checked against the prefill token and skipped.
"""

from __future__ import annotations

from plait.core.engine_output import EngineOutput, SampleDelta
from plait.outputs import PositionLogprobs, RequestOutput


def raw_logprobs(entries: list[PositionLogprobs] | None) -> list | None:
    """Logprob dicts back to the engine's (token, logprob, rank) lists, the chosen token first."""
    if entries is None:
        return None
    return [[(tid, lp.logprob, lp.rank) for tid, lp in entry.items()] for entry in entries]


def to_engine_output(out: RequestOutput, skip_first: bool = False, running: bool = False) -> EngineOutput:
    """A worker's delta output as engine news. `skip_first`: drop sample 0's first token (already sent);
    `running`: report every sample as still running (the prefill worker's one-token request goes on)."""
    samples = []
    for o in out.outputs:
        tokens, logprobs = list(o.token_ids), raw_logprobs(o.logprobs)
        if skip_first and o.index == 0 and tokens:
            tokens, logprobs = tokens[1:], (logprobs[1:] if logprobs is not None else None)
        reason, stop = (None, None) if running else (o.finish_reason, o.stop_reason)
        samples.append(SampleDelta(o.index, tokens, logprobs, reason, stop))
    return EngineOutput(out.request_id, samples, finished=all(s.finish_reason for s in samples),
                        num_cached_tokens=out.num_cached_tokens)


def aborted(request_id: str, n: int) -> EngineOutput:
    return EngineOutput(request_id, [SampleDelta(i, [], finish_reason="abort") for i in range(n)], finished=True)
