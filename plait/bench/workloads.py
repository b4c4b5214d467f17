"""Seeded, reproducible benchmark workloads made of token ids.

Prompts are token ids, not text, so plait and a baseline see exactly the same tokens (no tokenizer round trip)
and a prompt's length is exactly what the workload says. Ids are drawn from the vocabulary minus the special
ids, so no prompt accidentally contains an end-of-sequence or chat-control token. The one exception is `chat`,
whose prompts are real text rendered through the model's chat template (so they do hold its control tokens).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterable

WORKLOADS = ("random", "fixed", "sharegpt-like", "shared-prefix", "chat")

# sharegpt-like: log-normal lengths (median, sigma of the log, clip range), shaped like ShareGPT's
# (heavy right tail of long prompts, most outputs a few hundred tokens); generated here, nothing is downloaded.
SHAREGPT_INPUT = (200.0, 1.0, (4, 1024))
SHAREGPT_OUTPUT = (150.0, 0.8, (4, 512))


@dataclass
class Workload:
    """`prompts[i]` (token ids) should generate exactly `output_lens[i]` tokens."""

    name: str
    prompts: list[list[int]]
    output_lens: list[int]
    seed: int

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)

    def subset(self, n: int) -> "Workload":
        """The first n requests: what a slower baseline runs when it cannot afford all of them."""
        return Workload(self.name, self.prompts[:n], self.output_lens[:n], self.seed)

    def describe(self) -> str:
        lens = [len(p) for p in self.prompts]
        outs = set(self.output_lens)
        out = str(outs.pop()) if len(outs) == 1 else f"{min(self.output_lens)}-{max(self.output_lens)}"
        return (f"{self.name}: {len(self)} prompts, input {min(lens)}-{max(lens)} tokens "
                f"(mean {sum(lens) / len(lens):.0f}), output {out} tokens, seed {self.seed}")


def _allowed_ids(vocab_size: int, special_ids: Iterable[int]) -> list[int]:
    special = set(special_ids)
    allowed = [i for i in range(vocab_size) if i not in special]
    if not allowed:
        raise ValueError("the vocabulary has no non-special token ids to draw prompts from")
    return allowed


def _draw(rng: random.Random, allowed: list[int], length: int) -> list[int]:
    return [allowed[rng.randrange(len(allowed))] for _ in range(length)]


def random_workload(num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (),
                    input_len_range: tuple[int, int] = (64, 512), output_len: int = 128,
                    seed: int = 0) -> Workload:
    """Prompt lengths uniform in [lo, hi] (inclusive), every request generating `output_len` tokens."""
    lo, hi = input_len_range
    if not 1 <= lo <= hi:
        raise ValueError(f"input length range must satisfy 1 <= min <= max, got {lo}-{hi}")
    _check(num_prompts, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    lengths = [rng.randint(lo, hi) for _ in range(num_prompts)]
    prompts = [_draw(rng, allowed, n) for n in lengths]
    return Workload("random", prompts, [output_len] * num_prompts, seed)


def fixed_workload(num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (), input_len: int = 128,
                   output_len: int = 128, seed: int = 0) -> Workload:
    """Every prompt exactly `input_len` tokens, every output `output_len` tokens."""
    if input_len < 1:
        raise ValueError(f"input length must be >= 1, got {input_len}")
    _check(num_prompts, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    prompts = [_draw(rng, allowed, input_len) for _ in range(num_prompts)]
    return Workload("fixed", prompts, [output_len] * num_prompts, seed)


def _lognormal_lens(rng: random.Random, n: int, median: float, sigma: float, clip: tuple[int, int]) -> list[int]:
    lo, hi = clip
    return [min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def sharegpt_like_workload(num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (),
                           seed: int = 0) -> Workload:
    """Synthetic ShareGPT-shaped lengths: input log-normal (median 200, clipped to [4, 1024]), output log-normal
    (median 150, clipped to [4, 512]); token-id prompts, outputs forced to their length (ignore_eos)."""
    _check(num_prompts, 1)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    in_lens = _lognormal_lens(rng, num_prompts, *SHAREGPT_INPUT)
    out_lens = _lognormal_lens(rng, num_prompts, *SHAREGPT_OUTPUT)
    prompts = [_draw(rng, allowed, n) for n in in_lens]
    return Workload("sharegpt-like", prompts, out_lens, seed)


def _distinct_firsts(rng: random.Random, allowed: list[int], n: int) -> list[int]:
    """n first tokens, pairwise distinct when the vocabulary allows, so sequences really diverge there."""
    if len(allowed) >= n:
        return rng.sample(allowed, n)
    return _draw(rng, allowed, n)


def shared_prefix_workload(vocab_size: int, special_ids: Iterable[int] = (), num_groups: int = 16,
                           prompts_per_group: int = 16, prefix_len: int = 1024, question_len: int = 128,
                           output_len: int = 128, seed: int = 0) -> Workload:
    """SGLang's generated-shared-prefix: `num_groups` x `prompts_per_group` prompts; the prompts of one group share
    a `prefix_len`-token system prompt, then each has its own `question_len`-token question. Groups' prefixes
    start with distinct tokens, and a group's questions start with distinct tokens (vocabulary permitting), so
    the shared part is exactly the first `prefix_len` tokens. Prompts are ordered group by group."""
    if num_groups < 1 or prompts_per_group < 1:
        raise ValueError(f"groups and prompts per group must be >= 1, got {num_groups} x {prompts_per_group}")
    if prefix_len < 1 or question_len < 1:
        raise ValueError(f"prefix and question lengths must be >= 1, got {prefix_len} and {question_len}")
    _check(num_groups * prompts_per_group, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    prompts: list[list[int]] = []
    for first in _distinct_firsts(rng, allowed, num_groups):
        prefix = [first] + _draw(rng, allowed, prefix_len - 1)
        for q_first in _distinct_firsts(rng, allowed, prompts_per_group):
            prompts.append(prefix + [q_first] + _draw(rng, allowed, question_len - 1))
    return Workload("shared-prefix", prompts, [output_len] * len(prompts), seed)


def fork_workloads(vocab_size: int, special_ids: Iterable[int] = (), num_questions: int = 4, n: int = 16,
                   prompt_len: int = 1024, output_len: int = 128, seed: int = 0) -> tuple[Workload, Workload]:
    """The fork benchmark's pair for one n: (`num_questions` prompts, each to be sampled n times; the same number
    of samples as `num_questions` x n independent prompts of the same length). Every prompt starts with its own
    token (vocabulary permitting), so independent prompts share no KV block and questions share none either."""
    if num_questions < 1 or n < 1:
        raise ValueError(f"questions and samples per question must be >= 1, got {num_questions} x {n}")
    if prompt_len < 1:
        raise ValueError(f"prompt length must be >= 1, got {prompt_len}")
    _check(num_questions, output_len)
    rng = random.Random(seed)
    allowed = _allowed_ids(vocab_size, special_ids)
    firsts = _distinct_firsts(rng, allowed, num_questions * n)
    prompts = [[first] + _draw(rng, allowed, prompt_len - 1) for first in firsts]
    # The questions are the first of the independent prompts, so n = 1 compares identical work.
    return (Workload("fork", prompts[:num_questions], [output_len] * num_questions, seed),
            Workload("fork-independent", prompts, [output_len] * len(prompts), seed))


# chat: real questions (varied topics and lengths) combined with seeded phrasings, rendered by the chat template.
CHAT_QUESTIONS = (
    "What is the difference between a list and a tuple in Python?",
    "Explain how photosynthesis works.",
    "Write a short poem about the sea at night.",
    "What causes the seasons on Earth?",
    "How do I reverse a linked list in C?",
    "Summarize the plot of Romeo and Juliet.",
    "What are the main differences between TCP and UDP?",
    "Give me three ideas for a vegetarian dinner.",
    "Why is the sky blue?",
    "How does a hash table handle collisions?",
    "What is the capital of Australia, and why was it chosen?",
    "Explain the concept of opportunity cost with an example.",
    "How do vaccines train the immune system?",
    "Write a haiku about autumn leaves.",
    "What is the Pythagorean theorem and how is it proved?",
    "Describe the water cycle.",
    "What are some tips for improving sleep quality?",
    "How does compound interest work?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "What is a black hole?",
    "Explain recursion to a ten-year-old.",
    "What were the main causes of the First World War?",
    "How do I make a simple sourdough starter?",
    "What is the difference between weather and climate?",
    "Write a SQL query that finds the second highest salary in a table.",
    "How do noise-cancelling headphones work?",
    "What are the pros and cons of remote work?",
    "Explain what a transformer neural network is.",
    "How can I politely decline a meeting invitation?",
    "What is the difference between mitosis and meiosis?",
    "Suggest a name for a small bakery and explain the choice.",
    "How does GPS determine a location?",
)
CHAT_TEMPLATES = (
    "{q}",
    "Please answer briefly: {q}",
    "{q} Explain step by step.",
    "I'm studying for an exam. {q}",
    "Could you help me with this? {q} Keep it under a hundred words.",
    "Question: {q}\nAnswer in a friendly tone.",
    "My friend asked me this and I didn't know: {q} What should I tell them?",
    "{q} Please include an example.",
)


def chat_workload(num_prompts: int, tokenizer: Any, output_len: int = 128, seed: int = 0) -> Workload:
    """Real text: a question from CHAT_QUESTIONS in a phrasing from CHAT_TEMPLATES (both seeded), as one user
    message rendered with the model's chat template (generation prompt added), encoded without adding special
    tokens (the template already holds them)."""
    _check(num_prompts, output_len)
    if tokenizer is None:
        raise ValueError("the chat workload needs the model's tokenizer")
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        text = rng.choice(CHAT_TEMPLATES).format(q=rng.choice(CHAT_QUESTIONS))
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        prompts.append(tokenizer.encode(rendered, add_special_tokens=False))
    return Workload("chat", prompts, [output_len] * num_prompts, seed)


def _check(num_prompts: int, output_len: int) -> None:
    if num_prompts < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num_prompts}")
    if output_len < 1:
        raise ValueError(f"output length must be >= 1, got {output_len}")


def make_workload(name: str, num_prompts: int, vocab_size: int, special_ids: Iterable[int] = (), *,
                  input_len: int = 128, input_len_range: tuple[int, int] = (64, 512), output_len: int = 128,
                  seed: int = 0, num_groups: int = 16, prompts_per_group: int = 16, prefix_len: int = 1024,
                  question_len: int = 128, tokenizer: Any = None) -> Workload:
    """Dispatch on the workload name used by the command line. shared-prefix makes num_groups x
    prompts_per_group prompts (num_prompts is not used); chat needs `tokenizer`; sharegpt-like draws its own
    output lengths (output_len is not used)."""
    if name == "random":
        return random_workload(num_prompts, vocab_size, special_ids, input_len_range, output_len, seed)
    if name == "fixed":
        return fixed_workload(num_prompts, vocab_size, special_ids, input_len, output_len, seed)
    if name == "sharegpt-like":
        return sharegpt_like_workload(num_prompts, vocab_size, special_ids, seed)
    if name == "shared-prefix":
        return shared_prefix_workload(vocab_size, special_ids, num_groups, prompts_per_group, prefix_len,
                                      question_len, output_len, seed)
    if name == "chat":
        return chat_workload(num_prompts, tokenizer, output_len, seed)
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")


def add_extra_workload_args(group: Any) -> None:
    """The shared-prefix flags, common to `bench offline` and `bench serve` (argparse group or parser)."""
    group.add_argument("--num-groups", type=int, default=16, help="shared-prefix: groups (G)")
    group.add_argument("--prompts-per-group", type=int, default=16, help="shared-prefix: prompts per group (M)")
    group.add_argument("--prefix-len", type=int, default=1024, help="shared-prefix: shared system-prompt tokens (P)")
    group.add_argument("--question-len", type=int, default=128, help="shared-prefix: question tokens (Q)")


def workload_from_args(args: Any, vocab_size: int, special_ids: Iterable[int], tokenizer: Any = None) -> Workload:
    """make_workload with the flags of `bench offline` / `bench serve`."""
    return make_workload(args.workload, args.num_prompts, vocab_size, special_ids, input_len=args.input_len,
                         input_len_range=(args.min_input_len, args.max_input_len), output_len=args.output_len,
                         seed=args.seed, num_groups=args.num_groups, prompts_per_group=args.prompts_per_group,
                         prefix_len=args.prefix_len, question_len=args.question_len, tokenizer=tokenizer)
