"""Reading a request's tokens as prompt + output without concatenating them (that costs O(length) per step)."""

from __future__ import annotations


class TokenView:
    """prompt + output as one read-only sequence; `output` is the live list, so new tokens show up at once."""

    __slots__ = ("prompt", "output")

    def __init__(self, prompt: list[int], output: list[int]) -> None:
        self.prompt, self.output = prompt, output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    def at(self, i: int) -> int:
        p = len(self.prompt)
        return self.prompt[i] if i < p else self.output[i - p]

    def slice(self, start: int, end: int) -> list[int]:
        p = len(self.prompt)
        if end <= p:
            return self.prompt[start:end]
        if start >= p:
            return self.output[start - p: end - p]
        return self.prompt[start:] + self.output[: end - p]
