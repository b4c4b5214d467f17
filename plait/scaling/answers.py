"""Final answers out of completions: the last number, or the last \\boxed{...}, in a canonical form for voting.

Votes group answers by canonical form ("1,000", "1000.0" and "1000" are one answer). Grading against a reference
uses `answers_match`, which also asks `math-verify` (an optional dependency) when both sides are not plain numbers.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

Extractor = Callable[[str], "str | None"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def canonical(answer: str | None) -> str | None:
    """Numbers -> shortest exact form ('1,000.50' -> '1000.5', '4/2' -> '2'); other text -> stripped of
    whitespace, '$' and a trailing period. None and empty stay None."""
    if answer is None:
        return None
    text = answer.strip().strip("$").strip().rstrip(".").strip()
    if not text:
        return None
    number = _as_fraction(text)
    if number is None:
        return re.sub(r"\s+", " ", text)
    if number.denominator == 1:
        return str(number.numerator)
    as_float = float(number)
    if Fraction(repr(as_float)) == number:
        return repr(as_float)
    return f"{number.numerator}/{number.denominator}"


def _as_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> str | None:
    """The last number in the text ('... so 12 + 3 = 15.' -> '15'), canonical."""
    matches = _NUMBER.findall(text)
    return canonical(matches[-1]) if matches else None


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), canonical; None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return canonical(text[i:j])
    return None


def boxed_or_last_number(text: str) -> str | None:
    return boxed(text) or last_number(text)


_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(" + _NUMBER.pattern + r")")
_FINAL_ANSWER = re.compile(r"final answer is[:\s]*\$(.+?)\$")


def answer_is(text: str) -> str | None:
    """GSM8K's few-shot format: the number after the last "the answer is", else the last number."""
    matches = _ANSWER_IS.findall(text)
    return canonical(matches[-1]) if matches else last_number(text)


def minerva(text: str) -> str | None:
    """MATH's Minerva format: "The final answer is $X$", else the last \\boxed{}; None when neither is there
    (a stray number is no answer to a MATH problem)."""
    matches = _FINAL_ANSWER.findall(text)
    return canonical(matches[-1]) if matches else boxed(text)


EXTRACTORS: dict[str, Extractor] = {"last_number": last_number, "boxed": boxed,
                                    "boxed_or_last_number": boxed_or_last_number, "answer_is": answer_is,
                                    "minerva": minerva}


def get_extractor(name: str | Extractor) -> Extractor:
    if callable(name):
        return name
    if name not in EXTRACTORS:
        raise ValueError(f"extract must be one of {sorted(EXTRACTORS)} or a function, got {name!r}")
    return EXTRACTORS[name]


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Grade: canonical forms equal, else (for non-numbers, when math-verify is installed) math-verify's
    symbolic equivalence."""
    p, r = canonical(predicted), canonical(reference)
    if p is None or r is None:
        return False
    if p == r:
        return True
    if _as_fraction(p) is not None and _as_fraction(r) is not None:
        return False  # two different exact numbers: no need for the symbolic checker
    try:
        import math_verify
    except ImportError:
        return False
    try:
        return bool(math_verify.verify(math_verify.parse(f"${r}$"), math_verify.parse(f"${p}$")))
    except Exception:  # noqa: BLE001 - the checker's parser fails on odd text; that is a mismatch, not a crash
        return False
