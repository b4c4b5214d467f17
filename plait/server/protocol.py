"""Request and response schemas of the OpenAI-compatible API (they also generate the OpenAPI document).

Requests are validated strictly (no "0.5" for a float, no 1 for a bool) because OpenAI's service rejects those
too, and a client that gets away with them here would break there. Ranges are checked once, by SamplingParams,
so the server and the offline API cannot drift apart; the schemas check types and the API-only limits.
Unknown fields are ignored, as vLLM does, so clients that send newer OpenAI fields keep working.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from plait.params import MAX_N, SamplingParams
from plait.server.errors import bad_request

TokenIds = list[int]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: Optional[str] = None
    description: Optional[str] = None
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    """OpenAI's response_format: text (no constraint), json_object, or json_schema (always enforced)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    def to_structured(self) -> Optional[dict[str, Any]]:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"json_object": True}
        if self.json_schema is None:
            raise bad_request("response_format.json_schema is required when type is json_schema",
                              "response_format")
        # OpenAI allows omitting the schema (any JSON); a missing schema constrains to a JSON object.
        schema = self.json_schema.json_schema
        return {"json": schema} if schema is not None else {"json_object": True}


class StructuredOutputsRequest(_Strict):
    """vLLM's extra body field structured_outputs (exactly one field set); see StructuredOutputsParams."""

    model_config = ConfigDict(strict=True, extra="forbid")

    json_: Union[dict[str, Any], str, None] = Field(None, alias="json")
    json_object: Optional[bool] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class _SamplingRequest(_Strict):
    """Fields both generation endpoints share, including vLLM's extra engine parameters."""

    model: Optional[str] = Field(None, description="must be the served model name (GET /v1/models)")
    n: int = Field(1, description=f"choices to generate per prompt, 1..{MAX_N}")
    temperature: Optional[float] = Field(None, description="0 = greedy; default 1")
    top_p: Optional[float] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = Field(None, description="token id (as a string) -> bias")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # vLLM-style extra parameters (the openai client sends them through `extra_body`).
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: bool = False
    min_tokens: int = 0
    priority: int = Field(0, description="lower runs first; only when the server runs with --enable-priority")
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Structured output: OpenAI's response_format, or vLLM's structured_outputs (json, regex, choice, grammar).
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[StructuredOutputsRequest] = None

    def structured_spec(self) -> Optional[dict[str, Any]]:
        """The StructuredOutputsParams fields this request asks for (None: unconstrained)."""
        from_format = self.response_format.to_structured() if self.response_format is not None else None
        if from_format is not None and self.structured_outputs is not None:
            raise bad_request("response_format and structured_outputs cannot both constrain the output",
                              "structured_outputs")
        return self.structured_outputs.to_dict() if self.structured_outputs is not None else from_format

    def check_common(self, vocab_size: int) -> None:
        """API-level rules that SamplingParams does not know about (checked here so a stream gets a 400 too)."""
        if not 1 <= self.n <= MAX_N:
            raise bad_request(f"n must be in [1, {MAX_N}], got {self.n}", "n")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true", "stream_options")
        if self.logit_bias:
            for key in self.logit_bias:
                if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
                    raise bad_request(f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}",
                                      "logit_bias")

    def to_sampling_params(self, max_tokens: Optional[int], logprobs: Optional[int],
                           prompt_logprobs: Optional[int] = None) -> SamplingParams:
        """Raises ValueError naming the field (mapped to a 400 by the caller)."""
        given = dict(
            temperature=self.temperature, top_p=self.top_p, seed=self.seed, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty)
        return SamplingParams(
            n=self.n, max_tokens=max_tokens, min_tokens=self.min_tokens, stop=self.stop,
            stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, skip_special_tokens=self.skip_special_tokens, priority=self.priority,
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            structured_outputs=self.structured_spec(),
            **{k: v for k, v in given.items() if v is not None})


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]] = Field(
        ..., description="a string, a list of strings, a list of token ids, or a list of token-id lists")
    max_tokens: Optional[int] = Field(16, description="default 16, as OpenAI's")
    logprobs: Optional[int] = Field(None, description="top alternatives per token, 0..20")
    echo: bool = False
    suffix: Optional[str] = Field(None, description="not supported; must be null")


class ChatContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # tool_calls etc. reach the chat template

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ChatContentPart], None] = None
    name: Optional[str] = None

    def for_template(self) -> dict[str, Any]:
        """The dict the chat template sees: content parts flattened to text."""
        out = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            out["content"] = "".join(part.text for part in self.content)
        out.setdefault("content", "")
        return out


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage]
    max_tokens: Optional[int] = Field(None, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: Optional[int] = Field(None, description="default: up to the context length")
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, description="0..20; needs logprobs=true")
    add_generation_prompt: bool = True
    tools: Optional[list[Any]] = Field(None, description="not supported; must be null or empty")


# ---------------------------------------------------------------------------------------------- responses
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    def add(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens
        self.prompt_tokens_details.cached_tokens += cached


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    weight_versions: Optional[list[list[Union[int, str, None]]]] = None  # server/weight_versions.py


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None
    weight_version: Union[int, str, None] = None  # of the latest token (server/weight_versions.py)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    weight_versions: Optional[list[list[Union[int, str, None]]]] = None  # server/weight_versions.py


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None
    weight_version: Union[int, str, None] = None  # of the latest token (server/weight_versions.py)


# ---------------------------------------------------------------------------------------------- utilities
class TokenizeRequest(_Strict):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "plait"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
