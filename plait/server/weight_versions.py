"""Which weights produced an HTTP response: `weight_version` on every response and stream chunk, and per-choice
`weight_versions` segments, for RL rollouts served over HTTP while the trainer swaps weights.

`weight_version` is the version of the latest token (null: the weights the server started with). Each choice's
`weight_versions` lists `[first token index, version]` runs; more than one run only when weights changed in the
middle of the choice (update mode 'continue'). In a stream chunk the indices are offsets into that chunk's tokens,
as in `CompletionOutput.weight_versions` of a delta; in a whole response they index the choice's tokens.
"""

from __future__ import annotations

from typing import Union

from plait.outputs import CompletionOutput

Version = Union[int, str, None]


class VersionTracker:
    """Folds delta outputs into each choice's whole-response segments and the latest version seen."""

    def __init__(self, num_choices: int, engine=None) -> None:
        # Before the first token: the weights serving now (a chunk that carries no token yet says so too).
        self.latest: Version = getattr(engine, "weight_version", None)
        self.segments: list[list[tuple[int, Version]]] = [[] for _ in range(num_choices)]
        self.tokens = [0] * num_choices

    def add(self, choice: int, c: CompletionOutput, version: Version) -> None:
        self.latest = version
        runs = self.segments[choice]
        for at, v in c.weight_versions or ():
            if not runs or runs[-1][1] != v:
                runs.append((self.tokens[choice] + at, v))
        self.tokens[choice] += len(c.token_ids)

    def whole(self, choice: int) -> list[list]:
        return [list(run) for run in self.segments[choice]]


def delta_segments(c: CompletionOutput) -> list[list]:
    return [list(run) for run in c.weight_versions or ()]
