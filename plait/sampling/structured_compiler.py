"""Compile StructuredOutputsParams into llguidance matchers, once per distinct spec, from any thread.

Why llguidance (not xgrammar): it installs with no dependencies (xgrammar requires torch, triton and
transformers), compiles a JSON schema in ~2.5 ms against xgrammar's ~32 ms (a server sees many one-off schemas),
and its per-step masks (~0.07 ms a row) are small next to a decode step. scripts/grammar_libs_bench.py measures
both; docs/structured_outputs.md has the figures.

llguidance has no separate "compiled grammar" object: building an LLMatcher compiles. So the cache holds one
pristine matcher per spec and every request gets a `deep_copy()` of it (microseconds). No torch here: masks
are turned into tensors in structured.py.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from plait.sampling.structured_params import StructuredOutputsParams

if TYPE_CHECKING:
    import llguidance

# JSON is emitted compactly with json.dumps' default separators and no free whitespace: free whitespace lets
# a model pad forever (a weak one does) and never changes what the JSON means.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    try:
        import llguidance
    except ImportError as exc:  # a required dependency; a clear message if an environment lacks it
        raise ValueError("structured_outputs needs the 'llguidance' package: pip install llguidance") from exc
    return llguidance


class GrammarCompiler:
    """Thread-safe LRU cache: StructuredOutputsParams.key() -> a pristine llguidance matcher.

    `tokenizer` is plait's Tokenizer (its `tokenizers` backend is handed to llguidance, so token bytes match
    exactly); `vocab_size` is the model's (the mask's width); `eos_token_ids` end a finished grammar.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int], max_cached: int = 256) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._max_cached = max_cached
        self._lock = threading.Lock()
        self._ll_tokenizer: "llguidance.LLTokenizer | None" = None
        self._cache: OrderedDict[tuple[str, str], "llguidance.LLMatcher"] = OrderedDict()
        self.num_compiled = 0  # compilations done (cache misses), for tests and stats

    def ll_tokenizer(self) -> "llguidance.LLTokenizer":
        """Built on first use (~0.5 s for a 49k vocabulary), then shared by every matcher."""
        with self._lock:
            if self._ll_tokenizer is None:
                backend = getattr(self._tokenizer, "_backend", None)
                if backend is None or not hasattr(backend, "to_str"):
                    raise ValueError("structured_outputs needs a tokenizer backed by the `tokenizers` library")
                self._ll_tokenizer = _llguidance().LLTokenizer(
                    backend.to_str(), n_vocab=self.vocab_size, eos_token=self.eos_token_ids or None)
            return self._ll_tokenizer

    def compile(self, spec: StructuredOutputsParams) -> "llguidance.LLMatcher":
        """The cached pristine matcher for `spec` (do not advance it: use `matcher`). Raises ValueError naming
        the field when the schema / regex / grammar is invalid or uses an unsupported feature."""
        key = spec.key()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        ll = _llguidance()
        tokenizer = self.ll_tokenizer()
        grammar = self._grammar_text(ll, spec)
        # Compiled outside the lock: two threads may compile the same new spec once each, which is harmless.
        matcher = ll.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"structured_outputs.{spec.kind} is invalid: {matcher.get_error().strip()}")
        with self._lock:
            self.num_compiled += 1
            self._cache[key] = matcher
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return matcher

    def matcher(self, spec: StructuredOutputsParams) -> "llguidance.LLMatcher":
        """A fresh matcher at the grammar's start, for one request."""
        return self.compile(spec).deep_copy()

    @staticmethod
    def _grammar_text(ll: Any, spec: StructuredOutputsParams) -> str:
        kind = spec.kind
        try:
            if kind == "json":
                schema = json.loads(spec.json) if isinstance(spec.json, str) else spec.json
                return ll.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            if kind == "json_object":
                return ll.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
            if kind == "regex":
                return ll.LLMatcher.grammar_from_regex(spec.regex)
            if kind == "choice":
                # Lark string literals take JSON's escapes, so json.dumps quotes any choice exactly.
                return ll.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choice))
            from llguidance.gbnf_to_lark import any_to_lark

            return ll.LLMatcher.grammar_from_lark(any_to_lark(spec.grammar))
        except Exception as exc:  # llguidance raises ValueError / its own errors for malformed input
            raise ValueError(f"structured_outputs.{kind} is invalid: {exc}") from None
