"""Live step-wise strategies against best-of-N at equal generated tokens, paired per question, with an oracle.

    python scripts/pf_vs_bon.py STORED_SAMPLES.json LIVE.json [LIVE.json ...] [:: STORED_SAMPLES.json LIVE.json ...]

STORED_SAMPLES.json is a `plait eval --save-samples` file of the same task and questions (same --task, --seed,
--num-questions); LIVE.json is a `plait eval -o` file of live runs (e.g. pf:...,reward=oracle). Best-of-N with an
oracle reward is right when any of its N samples is (the oracle scores every wrong final answer 0), so its
accuracy per question is pass@N, estimated without bias from the stored samples (1 - C(n-c, N) / C(n, N), c right
of n). For each live row, N is the number of stored samples that cost the row's tokens per question
(tokens / mean tokens of a stored sample), interpolated linearly between the two whole N around it; a row that
spent more than all the stored samples is reported as beyond them rather than extrapolated. The difference (live
minus best-of-N) gets a paired percentile bootstrap over questions: the same questions are resampled for both, so
their shared difficulty cancels. Live rows of the same number of samples (e.g. pf:n=8 at temperature 0.1 and at
1.0, which never resamples) are also compared with each other, paired the same way. Groups separated by "::"
(other question sets, e.g. other --seed) are reported each, then pooled: a strategy in every group gets the
difference and interval over all their questions.
"""

from __future__ import annotations

import json
import random
import sys
from math import comb, floor

from plait.scaling.answers import answers_match


def pass_at(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k) if k <= n else float("nan")


def per_question_pass(counts: list[tuple[int, int]], k: float) -> list[float]:
    k = max(k, 1.0)
    lo = floor(k)
    hi = lo + 1
    t = k - lo
    return [(1 - t) * pass_at(n, c, lo) + (t * pass_at(n, c, hi) if t > 0 else 0.0) for n, c in counts]


def paired_interval(diffs: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choice(diffs) for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def compare(stored_path: str, live_paths: list[str]) -> dict[str, list[float]]:
    """Print one question set's comparisons; return each live row's per-question differences from best-of-N."""
    stored = json.load(open(stored_path))
    questions = stored["questions"]
    counts = [(len(q["samples"]), sum(answers_match(s["answer"], q["reference"]) for s in q["samples"]))
              for q in questions]
    n_stored = min(n for n, _ in counts)
    tokens = [s["num_tokens"] for q in questions for s in q["samples"]]
    per_sample = sum(tokens) / len(tokens)
    print(f"{stored_path}: {len(questions)} questions x {n_stored} samples, {per_sample:.1f} tokens a sample")
    print("best-of-N (oracle) = pass@N: " + ", ".join(
        f"N={k} ({k * per_sample:.0f} tok) {sum(pass_at(n, c, k) for n, c in counts) / len(counts):.3f}"
        for k in (1, 2, 4, 8, 12, 16, 24, 32) if k <= n_stored))
    rows = [row for path in live_paths for row in json.load(open(path))["rows"]]
    differences = {}
    for row in rows:
        if len(row["correct"]) != len(counts):
            raise SystemExit(f"{row['strategy']} has {len(row['correct'])} questions, the samples {len(counts)}")
    for row in rows:
        k = row["tokens_per_question"] / per_sample
        if k > n_stored:
            print(f"{row['strategy']}: {row['accuracy']:.3f} at {row['tokens_per_question']:.1f} tokens = "
                  f"{k:.1f} samples, beyond the {n_stored} stored: no equal-token best-of-N")
            continue
        bon = per_question_pass(counts, k)
        diffs = differences[row["strategy"]] = [float(x) - b for x, b in zip(row["correct"], bon)]
        low, high = paired_interval(diffs)
        print(f"{row['strategy']}: {row['accuracy']:.3f} at {row['tokens_per_question']:.1f} tokens; "
              f"best-of-N at {k:.2f} samples {sum(bon) / len(bon):.3f}; difference "
              f"{sum(diffs) / len(diffs):+.3f} [{low:+.3f}, {high:+.3f}]")
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["samples_per_question"] == b["samples_per_question"] and a["strategy"] != b["strategy"]:
                diffs = [float(x) - float(y) for x, y in zip(a["correct"], b["correct"])]
                low, high = paired_interval(diffs)
                print(f"{a['strategy']} minus {b['strategy']}: {sum(diffs) / len(diffs):+.3f} "
                      f"[{low:+.3f}, {high:+.3f}]")
    return differences


def main(args: list[str]) -> None:
    groups = [g.split() for g in " ".join(args).split("::")]
    if any(len(g) < 2 for g in groups):
        raise SystemExit(__doc__)
    results = [compare(g[0], g[1:]) for g in groups]
    if len(results) > 1:
        for name in results[0]:
            if all(name in r for r in results):
                diffs = [d for r in results for d in r[name]]
                low, high = paired_interval(diffs)
                print(f"pooled, {len(diffs)} questions: {name} minus best-of-N at equal tokens "
                      f"{sum(diffs) / len(diffs):+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
