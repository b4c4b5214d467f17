"""Speculative decoding: drafters propose tokens, the target model verifies them all in one forward pass.

config.py      SpeculativeConfig, parsed from vLLM's `speculative_config` dict
ngram.py       prompt lookup over a request's own prompt and output
suffix.py      suffix matching over a request and every other request with the same prompt (its siblings)
cost_model.py  when verifying drafts costs more than it saves (per step, from measured step times)
speculator.py  per-request drafting, adaptive draft length, metrics

Verification (greedy and the rejection rule) is sampling/rejection.py; the scheduler schedules each request's
drafts as one chunk and keeps only the accepted tokens' KV (core/scheduler.py).
"""

from plait.spec.config import SpeculativeConfig

__all__ = ["SpeculativeConfig"]
