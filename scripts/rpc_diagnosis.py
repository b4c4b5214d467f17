"""Why RPC and self-consistency disagree, on samples stored by `plait eval --save-samples`.

    python scripts/rpc_diagnosis.py DRAWS.json [N]      # N: the first N samples of each question (default 64)

Scores every question with majority vote, plait's RPC, and variants that change one part of RPC's definition
at a time (the confidence: exp(mean token logprob) as in the paper's code, or the sequence probability
exp(sum logprob) as in its formula; counting identical completions once or every time; pruning on or off).
Then lists the questions where SC and RPC disagree, with each answer's votes, best exp(mean) and exp(sum) and
token count. A diagnostic for docs/scaling.md, not a strategy: the variants are not offered by `plait eval`.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Callable

from plait.scaling.answers import answers_match
from plait.scaling.result import Sample
from plait.scaling.rpc import prune, rpc_tally
from plait.scaling.voting import Tally, majority


def pick(samples: list[Sample], confidence: Callable[[Sample], float], dedup: bool, pruning: bool) -> str | None:
    values = [confidence(s) for s in samples]
    keep = prune(values) if pruning else [True] * len(values)
    tally, seen = Tally(), set()
    for s, c, k in zip(samples, values, keep):
        if not k or s.answer is None or (dedup and (s.answer, s.text) in seen):
            continue
        seen.add((s.answer, s.text))
        tally.add(s.answer, c)
    return tally.leader()


def mean_conf(s: Sample) -> float:
    return math.exp(s.mean_logprob)


def seq_conf(s: Sample) -> float:
    return math.exp(s.mean_logprob * s.num_tokens)


VARIANTS: dict[str, Callable[[list[Sample]], str | None]] = {
    "sc (majority)": lambda ss: majority(ss).leader(),
    "rpc (plait: exp(mean), distinct texts, pruning)": lambda ss: rpc_tally(ss)[0].leader(),
    "exp(mean), distinct texts, no pruning": lambda ss: pick(ss, mean_conf, True, False),
    "exp(sum), distinct texts, no pruning": lambda ss: pick(ss, seq_conf, True, False),
    "exp(sum), distinct texts, pruning": lambda ss: pick(ss, seq_conf, True, True),
    "exp(mean), every sample, no pruning": lambda ss: pick(ss, mean_conf, False, False),
}


def main(path: str, n: int = 64) -> None:
    stored = json.load(open(path))
    questions = stored["questions"]
    correct = {name: 0 for name in [*VARIANTS, "greedy"]}
    texts_per_answer, disagreements = [], []
    for qi, q in enumerate(questions):
        samples = [Sample.from_dict(s) for s in q["samples"][:n]]
        picks = {name: fn(samples) for name, fn in VARIANTS.items()}
        picks["greedy"] = q["greedy"]["answer"]
        for name, answer in picks.items():
            correct[name] += answers_match(answer, q["reference"])
        texts: dict[str | None, set[str]] = {}
        for s in samples:
            texts.setdefault(s.answer, set()).add(s.text)
        texts_per_answer.append(sum(map(len, texts.values())) / len(texts))
        sc, rpc = picks["sc (majority)"], picks["rpc (plait: exp(mean), distinct texts, pruning)"]
        if sc != rpc:
            info = {a: (sum(s.answer == a for s in samples), max(mean_conf(s) for s in samples if s.answer == a),
                        max(seq_conf(s) for s in samples if s.answer == a),
                        max(s.num_tokens for s in samples if s.answer == a)) for a in (sc, rpc)}
            disagreements.append((qi, q["reference"], sc, rpc, info))
    print(f"{path}: {len(questions)} questions, {n} samples each")
    for name, k in correct.items():
        print(f"  {name:<50} {k / len(questions):.3f} ({k}/{len(questions)})")
    print(f"  distinct texts per answer (mean over questions): {sum(texts_per_answer) / len(questions):.3f}")
    print("  SC and RPC disagree (question, reference, sc, rpc; per answer: votes, exp(mean), exp(sum), tokens):")
    for qi, ref, sc, rpc, info in disagreements:
        detail = "; ".join(f"{a}: {v} votes, {m:.3f}, {q:.3f}, {t} tok" for a, (v, m, q, t) in info.items())
        print(f"    q{qi} ref {ref}: sc {sc}, rpc {rpc} ({detail})")
    sc_right = sum(answers_match(d[2], d[1]) for d in disagreements)
    rpc_right = sum(answers_match(d[3], d[1]) for d in disagreements)
    print(f"  of {len(disagreements)} disagreements: SC right {sc_right}, RPC right {rpc_right}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64)
