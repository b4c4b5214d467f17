"""Golden: plait on the Gemma 3 270M GGUF (from `plait pull gemma3-270m`) equals HF transformers on the same file
(fp32): greedy tokens of 8 prompts x 32 tokens, last-position logits, and the tokenizer's ids."""

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
    "<start_of_turn>user\nWhat is the boiling point of water?<end_of_turn>\n<start_of_turn>model\n",
]


@pytest.fixture(scope="module")
def engines():
    from plait import LLM
    from plait.loading.sources import resolve_model

    try:
        path = resolve_model("gemma3-270m")
    except ValueError as exc:
        pytest.skip(str(exc))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    llm = LLM(model="gemma3-270m", dtype="float32", max_num_seqs=16)
    return llm, hf, hf_tok


def test_tokenizer_ids_equal_hf(engines):
    llm, _, hf_tok = engines
    for prompt in PROMPTS + ["  two  spaces\n\n tabs\tand ünïcödé 日本語 🙂 x = 12345"]:
        assert llm.tokenizer.encode(prompt) == hf_tok(prompt).input_ids, prompt


def test_greedy_tokens_equal_hf_generate(engines):
    llm, hf, _ = engines
    token_prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    outs = llm.generate(token_prompts, SamplingParams(max_tokens=32, min_tokens=32, temperature=0),
                        use_tqdm=False)
    for ids, out in zip(token_prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
        assert out.outputs[0].token_ids == ref[0, len(ids):].tolist(), llm.tokenizer.decode(ids)
    assert llm.engine.scheduler.kv.all_blocks_free()


def test_last_position_logits_within_1e3(engines):
    llm, hf, _ = engines
    model = llm.engine.runner.model
    for prompt in PROMPTS[:4]:
        ids = llm.tokenizer.encode(prompt)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0, -1]
        got = plait_logits(model, ids, block_size=16)[-1]
        assert (got - expected).abs().max().item() < 1e-3


def test_long_prompt_across_the_window_matches_hf(engines):
    """A 600-token prompt (window 512): local layers must drop the oldest positions, as HF's sliding mask does.
    Prefilled in 128-token chunks through the engine (C kernel on CPU) and compared by greedy continuation."""
    from plait import LLM

    llm, hf, _ = engines
    text = " ".join(f"item {i} is {'red' if i % 3 else 'blue'};" for i in range(120))
    ids = llm.tokenizer.encode(text)[:600]
    assert len(ids) > 512
    chunked = LLM(model="gemma3-270m", dtype="float32", max_num_batched_tokens=128)
    got = chunked.generate([ids], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        expected_logits = hf(torch.tensor([ids])).logits[0, -1]
    assert got.outputs[0].token_ids == ref[0, len(ids):].tolist()
    got_logits = plait_logits(llm.engine.runner.model, ids, block_size=16)[-1]
    assert (got_logits - expected_logits).abs().max().item() < 1e-3
