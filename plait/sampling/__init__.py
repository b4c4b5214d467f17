"""Token sampling: batched logits processing, seeded sampling and logprobs."""

from plait.sampling.sampler import Sampler, SamplerOutput, SamplingBatch, TokenLogprobs

__all__ = ["Sampler", "SamplerOutput", "SamplingBatch", "TokenLogprobs"]
