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
    """bf16 with the GGUF's 4-bit weights at small batch vs the fp32 reference: first-token logprobs within 0.06
    and greedy prefixes agreeing about as long as dense bf16's do."""
    from plait import LLM
    from plait.runner.q4_linear import Q4Linear, can_use_q4

    if not can_use_q4(torch.bfloat16, torch.device("cpu")) or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("needs native bf16 and the CPU int4 kernel")
    reference, _ = engines
    native, dense = LLM(dtype="bfloat16"), LLM(dtype="bfloat16", native_q4=False)
    assert any(isinstance(m, Q4Linear) for m in native.engine.runner.model.modules())
    params = SamplingParams(max_tokens=32, min_tokens=32, temperature=0, logprobs=0)

    def agree(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))

    q4_agree, dense_agree = [], []
    for prompt in PROMPTS:
        ids = reference.tokenizer.encode(prompt)
        ref, q4, bf = (llm.generate([ids], params, use_tqdm=False)[0].outputs[0]
                       for llm in (reference, native, dense))
        first = [next(iter(x.logprobs[0].values())).logprob for x in (ref, q4)]
        assert abs(first[0] - first[1]) < 0.06
        q4_agree.append(agree(ref.token_ids, q4.token_ids))
        dense_agree.append(agree(ref.token_ids, bf.token_ids))
    # Greedy agreement over 8 x 32 tokens flips on bf16 near-ties: one early flip costs a prompt ~30 tokens. Measured
    # with the C kernels: q4 167-187 vs dense 225 (kernels off: q4 212); two prompts' worth of slack.
    assert sum(q4_agree) >= sum(dense_agree) - 64, (q4_agree, dense_agree)
