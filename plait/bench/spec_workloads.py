"""Workloads for speculative decoding, fixed before any measurement (never pruned to the prompts that accept).

copy: tasks whose answer reuses the given text: repeat, fix typos, rename variables in code, extract, convert a
list. Each is a chat message (the model's chat template) over one of the source texts below, all seeded.
chat: plain questions (bench/workloads.py's chat workload), where speculation must not slow anything down.
"""

from __future__ import annotations

import random
from typing import Any

SOURCES = (
    "The harbour was quiet in the early morning. Fishing boats rocked gently against the pier, and a few gulls "
    "circled above the market, waiting for the first crates of fish to be opened.",
    "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price "
    "* item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n",
    "Alice met Bob at the station at nine. They took the train to Oxford, where Carol and David were waiting "
    "with tickets for the museum. In the afternoon Emma joined them for tea.",
    "Ingredients: two cups of flour, one cup of sugar, three eggs, half a cup of milk, one teaspoon of baking "
    "powder, a pinch of salt.",
    "To reset the router, unplug it from the power socket, wait thirty seconds, plug it back in, and wait until "
    "the green light stops blinking before you connect again.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
    "self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
    "The meeting is moved from Tuesday to Thursday at 3 pm in room 204. Please bring the quarterly report and "
    "the updated budget spreadsheet.",
    "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune are the eight planets of the solar system, "
    "in order of their distance from the Sun.",
)

TYPOS = {"morning": "mornign", "gently": "gentyl", "station": "staiton", "afternoon": "afternon", "sugar": "sugr",
         "socket": "sockte", "report": "reprot", "distance": "distnace", "waiting": "wiating", "green": "gren"}

TASKS = (
    "Repeat the following text exactly, word for word:\n\n{text}",
    "Fix the spelling mistakes in this text and write out the corrected text in full:\n\n{typo_text}",
    "Rewrite this text, keeping every sentence but putting each one on its own line:\n\n{text}",
    "Copy this text and then add one sentence at the end that summarises it:\n\n{text}",
    "Rewrite the following with clearer names for the variables, changing nothing else:\n\n{text}",
)


def _with_typos(text: str) -> str:
    for right, wrong in TYPOS.items():
        text = text.replace(right, wrong)
    return text


def copy_workload_texts(num_prompts: int, seed: int = 0) -> list[str]:
    """User messages: every (task, source) pair in a seeded order, cycled when more are asked for."""
    pairs = [(t, s) for t in TASKS for s in SOURCES]
    random.Random(seed).shuffle(pairs)
    return [pairs[i % len(pairs)][0].format(text=pairs[i % len(pairs)][1],
                                            typo_text=_with_typos(pairs[i % len(pairs)][1]))
            for i in range(num_prompts)]


def chat_prompts(tokenizer: Any, messages: list[str]) -> list[list[int]]:
    out = []
    for text in messages:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        out.append(tokenizer.encode(rendered, add_special_tokens=False))
    return out


def spec_workload(name: str, num_prompts: int, tokenizer: Any, seed: int = 0) -> list[list[int]]:
    if name == "copy":
        return chat_prompts(tokenizer, copy_workload_texts(num_prompts, seed))
    if name == "chat":
        from plait.bench.workloads import chat_workload

        return chat_workload(num_prompts, tokenizer, seed=seed).prompts
    raise ValueError(f"unknown speculative workload {name!r}; choose copy or chat")


def ngram_replay(prompt: list[int], output: list[int], k: int = 4, min_n: int = 1, max_n: int = 3) -> float:
    """Tokens per target step that prompt lookup would give on this (greedy) output: at each step draft k tokens
    from the context so far, accept the run that matches the real output, plus one. An upper bound for the
    engine's figure (no cost model, no batch limits)."""
    from plait.spec.ngram import NgramIndex
    from plait.spec.tokens import TokenView

    index, done, steps = NgramIndex(min_n, max_n), [], 0
    view = TokenView(prompt, done)
    # The first output token comes from the prefill, as in the engine.
    done.append(output[0]) if output else None
    while len(done) < len(output):
        draft = index.propose(view, min(k, len(output) - len(done) - 1))
        accepted = 0
        while accepted < len(draft) and draft[accepted] == output[len(done) + accepted]:
            accepted += 1
        done.extend(output[len(done): len(done) + accepted + 1])
        steps += 1
    return (len(output) - 1) / steps if steps else 1.0
