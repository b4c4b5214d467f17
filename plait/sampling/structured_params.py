"""StructuredOutputsParams: which grammar constrains one request's output (vLLM's names), checked for shape.

Pure data and pure Python (no torch, no grammar engine), so SamplingParams can validate it wherever it is built.
Whether a schema, regex or grammar is actually valid is only known by compiling it: the engine does that when
the request is submitted (see structured_compiler.py), and a bad one raises ValueError there, before queuing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of the fields is set.

    json: a JSON schema (dict or JSON string); json_object: True for "any JSON object"; regex: a regular
    expression (Rust `regex` syntax) the whole output must match; choice: the output is exactly one of these
    strings; grammar: a Lark grammar (llguidance's dialect) or a GBNF grammar (llama.cpp's format).
    """

    json: dict | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs must set exactly one of {', '.join(_KINDS)}, got "
                             f"{', '.join(given) or 'none'}")
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    schema = json.loads(self.json)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"structured_outputs.json must be a JSON schema; the string is not JSON: "
                                     f"{exc}") from None
            else:
                schema = self.json
            if not isinstance(schema, (dict, bool)):
                raise ValueError(f"structured_outputs.json must be a JSON schema (an object), got "
                                 f"{type(schema).__name__}")
        if self.json_object is not None and self.json_object is not True and self.json_object is not False:
            raise ValueError(f"structured_outputs.json_object must be true, got {self.json_object!r}")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError(f"structured_outputs.regex must be a non-empty string, got {self.regex!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValueError(f"structured_outputs.grammar must be a non-empty string, got {self.grammar!r}")
        if self.choice is not None:
            if (not isinstance(self.choice, (list, tuple)) or not self.choice
                    or not all(isinstance(c, str) and c for c in self.choice)):
                raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, got "
                                 f"{self.choice!r}")
            object.__setattr__(self, "choice", tuple(self.choice))

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    def key(self) -> tuple[str, str]:
        """A hashable, canonical key for the compiled-grammar cache: equal specs share one compilation."""
        kind = self.kind
        if kind == "json":
            schema = json.loads(self.json) if isinstance(self.json, str) else self.json
            return kind, json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if kind == "json_object":
            return kind, ""
        if kind == "choice":
            return kind, json.dumps(list(self.choice))
        return kind, getattr(self, kind)


def to_structured_outputs(value: Any) -> StructuredOutputsParams | None:
    """Accept a StructuredOutputsParams, a dict of its fields (as the HTTP body sends), or None."""
    if value is None or isinstance(value, StructuredOutputsParams):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(_KINDS))
        if unknown:
            raise ValueError(f"structured_outputs has unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
                             f"{', '.join(_KINDS)}")
        return StructuredOutputsParams(**{k: v for k, v in value.items() if v is not None})
    raise ValueError(f"structured_outputs must be a StructuredOutputsParams or a dict with one of "
                     f"{', '.join(_KINDS)}, got {type(value).__name__}")
