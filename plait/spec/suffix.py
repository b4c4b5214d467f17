"""Suffix drafting over a family of requests: the request's own tokens and those of every running request with
the same prompt (the other samples of an n > 1 request, repeated samples of one question), so what one sample
wrote drafts for the others.

For the tail of the request's tokens, find the earlier positions (in any member) where the longest suffix of it
occurs, then walk forward through what followed them, taking the most common next token while it keeps at least
`min_share` of the matches that are still in agreement (a suffix tree walked by frequency, as in Arctic's suffix
decoding, built here from a per-token occurrence list instead of a tree). Prompt positions are stored once for
the whole family.
"""

from __future__ import annotations

from collections import Counter

from plait.spec.tokens import TokenView

# Occurrences kept per token: the most recent ones. Bounds the work per proposal on very repetitive text.
_MAX_OCCURRENCES = 64


class SuffixFamily:
    """Occurrence index of one prompt and its members' outputs. A position is (member id or None for the shared
    prompt, index in prompt + output)."""

    def __init__(self, prompt: list[int]) -> None:
        self.prompt = prompt
        self.members: dict[str, list[int]] = {}  # member id -> its live output list
        self._indexed: dict[str, int] = {}  # output positions already indexed, per member
        self._occurrences: dict[int, list[tuple[str | None, int]]] = {}
        # The prompt's last token has no continuation inside the prompt: every member continues it differently.
        for i, token in enumerate(prompt[:-1]):
            self._add(token, None, i)

    def add_member(self, member_id: str, output: list[int]) -> None:
        self.members[member_id] = output
        self._indexed[member_id] = 0

    def remove_member(self, member_id: str) -> None:
        self.members.pop(member_id, None)
        self._indexed.pop(member_id, None)
        # Its positions stay in the occurrence lists until they age out; they are skipped once it is gone.

    def _add(self, token: int, member: str | None, position: int) -> None:
        occ = self._occurrences.setdefault(token, [])
        occ.append((member, position))
        if len(occ) > 2 * _MAX_OCCURRENCES:
            del occ[:-_MAX_OCCURRENCES]

    def sync(self) -> None:
        """Index every member's new output tokens, all but its last (the last has no continuation yet; the
        prompt's last token is indexed here, under the member, once the member has an output token after it)."""
        p = len(self.prompt)
        for member, output in self.members.items():
            done = self._indexed[member]
            for j in range(done, len(output)):  # position p - 1 + j holds the token before output[j]
                token = self.prompt[-1] if j == 0 else output[j - 1]
                self._add(token, member, p - 1 + j)
            self._indexed[member] = len(output)

    def _token(self, member: str | None, position: int) -> int | None:
        p = len(self.prompt)
        if position < p:
            return self.prompt[position]
        output = self.members.get(member) if member is not None else None
        if output is None or position - p >= len(output):
            return None
        return output[position - p]

    def propose(self, member_id: str, k: int, max_match: int, min_match: int, min_share: float) -> list[int]:
        output = self.members[member_id]
        tokens = TokenView(self.prompt, output)
        length = len(tokens)
        if length < 2:
            return []
        candidates = []
        for member, position in self._occurrences.get(tokens.at(length - 1), ())[-_MAX_OCCURRENCES:]:
            if member == member_id and position >= length - 1:
                continue  # the tail itself
            if member is not None and member not in self.members:
                continue  # a finished member
            matched = 1
            while (matched < max_match and position - matched >= 0 and length - 1 - matched >= 0
                   and self._token(member, position - matched) == tokens.at(length - 1 - matched)):
                matched += 1
            candidates.append((matched, member, position))
        if not candidates:
            return []
        best = max(c[0] for c in candidates)
        if best < min_match:
            return []
        active = [(member, position) for matched, member, position in candidates if matched == best]
        draft: list[int] = []
        # A short match predicts little: draft at most twice the matched length.
        for step in range(1, min(k, 2 * best) + 1):
            nexts = [(m, pos, self._token(m, pos + step)) for m, pos in active]
            counts = Counter(t for _, _, t in nexts if t is not None)
            if not counts:
                break
            token, count = counts.most_common(1)[0]
            if count < min_share * len(active):
                break
            draft.append(token)
            active = [(m, pos) for m, pos, t in nexts if t == token]
        return draft
