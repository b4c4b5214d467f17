"""A*-style search over reasoning steps (after A*-decoding).

Partial solutions wait in a priority queue ordered by their reward. Each round pops the best `width` of them and
expands each with `k` sampled next steps (one request with n=k, generation stopping at `step_delimiter`); the
children are scored by the reward and pushed back. A child that ends at EOS or a caller's stop string, or reaches
the solution's token cap or `max_steps`, is a complete solution (a step cut by `step_max_tokens` is just a long
step); it too waits in the queue, and counts as found only when its reward is strictly above every open partial
solution's: that is what makes the search best-first rather than greedy. The search stops after `num_solutions`
solutions are found, when no partial solution is left open, or when the budget (`max_expansions` expansions,
`max_tokens_total` generated tokens) is spent; then the complete solution with the highest reward (ties: the first
generated), or failing that the best partial one, is the answer.

The budget is never exceeded: each expansion reserves its tokens (k children x the step's token cap) before it
starts, and the cap shrinks to what is left. Partial solutions wait without holding KV blocks; when one is resumed,
its prompt + partial token ids hit the engine's prefix cache (suspend/resume costs at most the last partial block).
Seeds are derived from (seed, expansion number) and expansions are numbered in pop order, so a seed reproduces
the search.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from plait.params import SamplingParams
from plait.scaling.answers import get_extractor
from plait.scaling.base import Strategy, check_int, solve_live
from plait.scaling.draws import DEFAULT_PARAMS, derive_seed
from plait.scaling.result import Sample, ScalingResult
from plait.scaling.rewards import Reward
from plait.scaling.steps import Step, step_params, write_steps
from plait.scaling.voting import Tally


@dataclass
class _Node:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    depth: int = 0
    score: float = 0.0
    logprob_sum: float = 0.0
    done: bool = False
    finish_reason: str | None = None


class StepSearch(Strategy):
    name = "search"

    def __init__(self, k: int = 4, step_delimiter: str = "\n\n", reward: Reward | None = None,
                 num_solutions: int = 1, width: int = 1, max_expansions: int = 32,
                 max_tokens_total: int | None = None, max_steps: int = 40, step_max_tokens: int = 128) -> None:
        self.k = check_int("k", k, 1)
        if not isinstance(step_delimiter, str) or not step_delimiter:
            raise ValueError(f"step_delimiter must be a non-empty string, got {step_delimiter!r}")
        self.step_delimiter, self.reward = step_delimiter, reward
        self.num_solutions = check_int("num_solutions", num_solutions, 1)
        self.width = check_int("width", width, 1)
        self.max_expansions = check_int("max_expansions", max_expansions, 1)
        self.max_tokens_total = None if max_tokens_total is None else check_int("max_tokens_total",
                                                                                max_tokens_total, 1)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.step_max_tokens = check_int("step_max_tokens", step_max_tokens, 1)
        self.budget = self.max_expansions * self.k  # step sequences it may generate
        self.expansions = 0  # in the last solve (for tests and reports)

    async def run(self, draws: Any) -> ScalingResult:
        return await solve_live(self, draws)

    async def solve(self, engine: Any, prompt: Any, *, params: SamplingParams | None = None,
                    extract: Any = "last_number", seed: int = 0) -> ScalingResult:
        started = time.perf_counter()
        extract_fn = get_extractor(extract)
        base = params or DEFAULT_PARAMS
        solution_cap = base.max_tokens or self.step_max_tokens * self.max_steps
        sp = step_params(base, self.step_delimiter)
        _, prompt_ids = engine.encode(prompt)
        order = itertools.count()
        queue: list[tuple] = []
        found: list[_Node] = []  # complete solutions accepted from the head of the queue, in that order
        complete: list[_Node] = []  # every complete solution generated, in that order
        explored: list[_Node] = []

        def push(node: _Node) -> None:
            # Best reward first. Among equal rewards partial solutions come before complete ones, so a complete
            # solution heads the queue only when its reward is strictly above every open partial one's: a
            # solution that merely ties them (with a 0/1 judge, a wrong one scored 0 among partials scored 0)
            # never ends the search while the budget can still improve on it. Equal partial solutions go to the
            # deeper one (nearer completion; breadth-first among equals would never finish), equal complete ones
            # to the first generated; then push order (deterministic).
            heapq.heappush(queue, (-node.score, node.done, 0 if node.done else -node.depth, next(order), node))

        def accept() -> None:
            while queue and queue[0][-1].done and len(found) < self.num_solutions:
                found.append(heapq.heappop(queue)[-1])

        push(_Node())
        cost = {"prompt": 0, "generated": 0, "launched": 0, "reserved": 0}
        self.expansions = 0

        def tokens_left() -> int | None:
            return None if self.max_tokens_total is None else self.max_tokens_total - cost["reserved"]

        async def expand(node: _Node, number: int, k: int, cap: int) -> list[_Node]:
            steps = await write_steps(engine, prompt_ids, node.token_ids, sp, k, cap,
                                      derive_seed(seed, "expand", number), self.step_delimiter)
            cost["prompt"] += len(prompt_ids) + len(node.token_ids)  # one request, its n=k children share it
            cost["generated"] += sum(len(s.token_ids) for s in steps)
            children = [self._child(node, s, solution_cap) for s in steps]
            scores = await asyncio.gather(*(self._score(prompt, c) for c in children))
            for c, score in zip(children, scores):
                c.score = score
            return children

        while True:
            accept()
            if not queue or len(found) >= self.num_solutions or self.expansions >= self.max_expansions:
                break
            # Pop up to `width` partial solutions; stop at a complete one: those popped score at least as high,
            # so it waits until their children are scored.
            popped: list[_Node] = []
            while queue and not queue[0][-1].done and len(popped) < min(self.width,
                                                                         self.max_expansions - self.expansions):
                popped.append(heapq.heappop(queue)[-1])
            batch: list[tuple[_Node, int, int, int]] = []
            for node in popped:
                plan = self._plan(node, solution_cap, tokens_left())
                if plan is None:  # no tokens left for it: it stays open
                    push(node)
                    continue
                k, cap = plan
                cost["reserved"] += k * cap
                cost["launched"] += k
                batch.append((node, self.expansions, k, cap))
                self.expansions += 1
            if not batch:
                break
            explored += [n for n, *_ in batch]
            for children in await asyncio.gather(*(expand(*b) for b in batch)):
                for c in children:
                    push(c)
                    if c.done:
                        complete.append(c)
        best = self._best(complete, queue, explored)
        return self._result(best, found, complete, extract_fn, cost, started)

    def _plan(self, node: _Node, solution_cap: int, left: int | None) -> tuple[int, int] | None:
        """(children, token cap per child) for expanding `node` within the budget, or None when nothing fits."""
        cap = min(self.step_max_tokens, solution_cap - len(node.token_ids))
        k = self.k
        if left is not None:
            k = min(k, left)
            if k < 1:
                return None
            cap = min(cap, left // k)
        return (k, cap) if cap >= 1 else None

    def _child(self, parent: _Node, step: Step, solution_cap: int) -> _Node:
        ids = parent.token_ids + step.token_ids
        done = step.final or len(ids) >= solution_cap or parent.depth + 1 >= self.max_steps
        return _Node(ids, parent.text + step.text, parent.depth + 1, 0.0, parent.logprob_sum + step.logprob_sum,
                     done, (step.finish_reason if step.final else "length") if done else None)

    async def _score(self, question: Any, node: _Node) -> float:
        if self.reward is not None:
            return float(await self.reward(question, node.text))
        return node.logprob_sum / len(node.token_ids) if node.token_ids else 0.0  # self-certainty, no extra call

    @staticmethod
    def _best(complete: list[_Node], queue: list, explored: list[_Node]) -> _Node | None:
        # The highest reward among every complete solution, found or still queued: a solution found later, or one
        # generated after the last found one, can score higher than the first found.
        if complete:
            return max(complete, key=lambda n: n.score)  # max keeps the first of equal scores: generation order
        partial = [entry[-1] for entry in sorted(queue)] + [n for n in explored if n.token_ids]
        return max(partial, key=lambda n: (n.score, n.depth)) if partial else None

    def _result(self, best: _Node | None, found: list[_Node], complete: list[_Node], extract_fn: Any,
                cost: dict, started: float) -> ScalingResult:
        ordered = sorted(complete, key=lambda n: -n.score)  # best first; stable: ties in generation order
        if best is not None and all(best is not n for n in ordered):
            ordered.append(best)  # no complete solution: report the best partial one
        samples = [Sample(index=i, text=n.text, answer=extract_fn(n.text), num_tokens=len(n.token_ids),
                          mean_logprob=n.logprob_sum / len(n.token_ids) if n.token_ids else None,
                          finish_reason=n.finish_reason if n.done else "partial", score=n.score)
                   for i, n in enumerate(ordered)]
        tally = Tally()
        for s in samples:  # votes: the best score each answer reached
            if s.answer is not None and s.score > tally.weights.get(s.answer, float("-inf")):
                tally.weights[s.answer] = s.score
        chosen = next((s for s, n in zip(samples, ordered) if n is best), None)
        return ScalingResult(strategy=self.describe(), answer=chosen.answer if chosen else None,
                             text=chosen.text if chosen else "", samples=samples, samples_used=len(found),
                             samples_launched=cost["launched"], prompt_tokens=cost["prompt"],
                             generated_tokens=cost["generated"], wall_s=time.perf_counter() - started,
                             votes=dict(tally.weights), stopped_early=len(found) >= self.num_solutions,
                             details={"expansions": self.expansions, "solutions_found": len(found),
                                      "complete_generated": len(complete)})

    def describe(self) -> str:
        reward = getattr(self.reward, "__name__", "reward") if self.reward else "logprob"
        tokens = "" if self.max_tokens_total is None else f",tokens={self.max_tokens_total}"
        return f"search:k={self.k},width={self.width},reward={reward}{tokens}"
