"""Incremental detokenization with stop strings matched across token boundaries.

Every call does work bounded by the new token and the longest stop string, never by the text so far: the text
is kept as released pieces plus a short unreleased tail, so a long generation costs O(its length) in total.
"""

from __future__ import annotations

from typing import Protocol, Sequence

# Prompt tokens kept as left context, so tokenizers that drop a leading space on a lone token decode right.
_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, one token at a time.

    Text is produced only once it is stable (no dangling partial UTF-8 character). With stop strings, the tail
    of the text that could still be the start of one is held back (only as much as actually matches a stop
    string's beginning), so a streamed delta never contains any part of a stop string that ends the output.
    """

    def __init__(self, tokenizer: Decoder, prompt_token_ids: list[int], stop: list[str],
                 include_stop: bool = False, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.tokens = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.stop = stop
        self.include_stop = include_stop
        self.skip_special_tokens = skip_special_tokens
        self._released: list[str] = []
        self._tail = ""  # decoded, not yet released: may be the start of a stop string
        self._taken = 0  # pieces of _released already handed out by take()
        self.stopped = False

    def add(self, token_id: int, stop_allowed: bool = True) -> str | None:
        """Append a token; returns the stop string if the text now contains one (the text is cut there and
        nothing after it is ever produced). `stop_allowed` False (before min_tokens) skips the check."""
        if self.stopped:
            return None
        self.tokens.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.tokens[self.prefix_offset: self.read_offset], self.skip_special_tokens)
        full = decode(self.tokens[self.prefix_offset:], self.skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # mid-character: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        searched = len(self._tail)
        self._tail += full[len(prefix):]
        if not self.stop:
            self._release(len(self._tail))
            return None
        if stop_allowed:
            found = self._find_stop(searched)
            if found is not None:
                return found
        self._release(len(self._tail) - self._holdback())
        return None

    def _find_stop(self, searched: int) -> str | None:
        """The earliest stop string in the tail; text before `searched` was checked when it arrived (up to a
        stop string's length minus one characters, which can span the boundary)."""
        best = None
        for stop in self.stop:
            idx = self._tail.find(stop, max(0, searched - len(stop) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self._tail = self._tail[: idx + len(stop)] if self.include_stop else self._tail[:idx]
        self._release(len(self._tail))
        self.stopped = True
        return stop

    def _holdback(self) -> int:
        """Length of the longest end of the tail that is a proper beginning of some stop string."""
        tail = self._tail
        longest = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(tail)), longest, -1):
                if tail.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _release(self, count: int) -> None:
        if count > 0:
            self._released.append(self._tail[:count])
            self._tail = self._tail[count:]

    def flush(self) -> None:
        """The output has ended: whatever was held back is final text."""
        self._release(len(self._tail))

    def take(self) -> str:
        """Text released since the last take()."""
        new = "".join(self._released[self._taken:])
        self._taken = len(self._released)
        return new

    @property
    def text(self) -> str:
        """All released text (what the caller has or may have seen)."""
        return "".join(self._released)
