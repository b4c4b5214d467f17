"""Golden: plait on the default SmolLM2 GGUF equals HF transformers on the same file (fp32)."""

import pytest
import torch

from plait import SamplingParams
from tests.helpers import plait_logits

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three primary colors:",
    "2 + 2 =",
    "Translate to French: Good morning, my friend.",
    "The quick brown fox",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def engines():
    from plait import LLM
    from plait.loading.sources import resolve_model

    path = resolve_model(None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    llm = LLM(dtype="float32", max_num_seqs=16)
    return llm, hf


def test_greedy_tokens_equal_hf_generate(engines):
    llm, hf = engines
    token_prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    outs = llm.generate(token_prompts, SamplingParams(max_tokens=32, min_tokens=32, temperature=0),
                        use_tqdm=False)
    for ids, out in zip(token_prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
        assert out.outputs[0].token_ids == ref[0, len(ids):].tolist(), llm.tokenizer.decode(ids)
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_last_position_logits_within_1e3(engines):
    llm, hf = engines
    model = llm.engine.runner.model
    for prompt in PROMPTS[:4]:
        ids = llm.tokenizer.encode(prompt)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0, -1]
        got = plait_logits(model, ids, block_size=16)[-1]
        assert (got - expected).abs().max().item() < 1e-3


def test_native_q4_path_stays_as_close_to_fp32_as_dense_bf16(engines):
    """bf16 with the GGUF's 4-bit weights at small steps vs the fp32 reference, teacher-forced: each engine scores
    the reference's own greedy continuations, fed in steps of 8 tokens (so the 4-bit kernel runs), and the mean
    logprob error is compared with dense bf16's. Teacher forcing does not flip on bf16 near-ties as greedy
    agreement does."""
    from plait import LLM
    from plait.runner.q4_linear import Q4Linear, can_use_q4

    if not can_use_q4(torch.bfloat16, torch.device("cpu")) or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("needs native bf16 and the CPU int4 kernel")
    # (where the CPU has AVX512-VNNI the 4-bit path runs plait's integer kernel, otherwise torch's int4 kernel)
    reference, _ = engines
    native = LLM(dtype="bfloat16", max_num_batched_tokens=8)
    dense = LLM(dtype="bfloat16", native_q4=False, max_num_batched_tokens=8)
    assert any(isinstance(m, Q4Linear) for m in native.engine.runner.model.modules())
    greedy = SamplingParams(max_tokens=32, min_tokens=32, temperature=0)
    score = SamplingParams(max_tokens=1, prompt_logprobs=1)

    def continuation_logprobs(llm, full, start):
        entries = llm.generate([full], score, use_tqdm=False)[0].prompt_logprobs
        return torch.tensor([entries[i][full[i]].logprob for i in range(start, len(full))])

    errors = {"q4": [], "dense": []}
    for prompt in PROMPTS:
        ids = reference.tokenizer.encode(prompt)
        full = ids + reference.generate([ids], greedy, use_tqdm=False)[0].outputs[0].token_ids
        want = continuation_logprobs(reference, full, len(ids))
        for name, llm in (("q4", native), ("dense", dense)):
            errors[name].append((continuation_logprobs(llm, full, len(ids)) - want).abs().mean().item())
    q4, bf = sum(errors["q4"]) / len(PROMPTS), sum(errors["dense"]) / len(PROMPTS)
    # Measured (AVX-512 EPYC): mean |logprob error| per token 0.043 for the 4-bit path through the VNNI kernel (its
    # activations are rounded to int8), 0.026 through torch's int4 kernel, 0.022 for dense bf16. The bound is the
    # quality gate of every numeric change (issue #14): at most 0.05, and within 2.5x dense bf16.
    assert q4 <= 0.05 and q4 <= 2.5 * bf, errors
