"""Incremental detokenization with stop strings matched across token boundaries."""

from __future__ import annotations

from typing import Protocol, Sequence

# Prompt tokens kept as left context, so tokenizers that drop a leading space on a lone token decode right.
_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text, one token at a time.

    Text is produced only once it is stable (no dangling partial UTF-8 character). When stop strings are set,
    the last (longest stop - 1) characters are held back from `emittable` until they cannot start a stop string,
    so a streamed stop string never reaches the caller.
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
        self.text = ""
        self._holdback = max((len(s) for s in stop), default=1) - 1

    def add(self, token_id: int, stop_allowed: bool = True) -> str | None:
        """Append a token; returns the stop string if the text now contains one (the text is cut there).
        `stop_allowed` False (before min_tokens) skips the stop-string check for this token."""
        self.tokens.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.tokens[self.prefix_offset: self.read_offset], self.skip_special_tokens)
        full = decode(self.tokens[self.prefix_offset:], self.skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # mid-character: wait for the next token
        previous = len(self.text)
        self.text += full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return self._find_stop(previous) if stop_allowed else None

    def _find_stop(self, previous_len: int) -> str | None:
        if not self.stop:
            return None
        best = None
        for stop in self.stop:
            idx = self.text.find(stop, max(0, previous_len - len(stop) + 1))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self.text = self.text[: idx + len(stop)] if self.include_stop else self.text[:idx]
        return stop

    def emittable(self, finished: bool) -> str:
        if finished or not self._holdback:
            return self.text
        return self.text[: max(0, len(self.text) - self._holdback)]
