"""The shapes of OpenAI's API as the server speaks them: request bodies (validated, bounded: seeds,
temperatures, token-id prompts) and the pieces of a response (server-sent events, usage, errors).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from edgekit.serve.engine import Job
from edgekit.serve.logprobs import MAX_TOP_LOGPROBS


class APIError(Exception):
    """A request answered with an error: HTTP status, one-line message, and its outcome for the metrics."""

    def __init__(self, status: int, message: str, outcome: str = "rejected", code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome, self.code, self.headers = status, message, outcome, code, headers


# ---------------------------------------------------------------- request bodies
def not_empty(prompt):
    """A prompt with something to continue: text, token ids, or a batch of token-id lists, none of them empty; one
    message for every empty shape (pydantic's own differ by type and name none of them)."""
    if not prompt or (isinstance(prompt, list) and any(isinstance(p, list) and not p for p in prompt)):
        raise PydanticCustomError("empty_prompt", "the prompt is empty: send text or token ids to continue")
    return prompt


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr = Field(description="text to continue")
    max_new_tokens: StrictInt = Field(32, ge=1, description="tokens to generate")

    _prompt_not_empty = field_validator("prompt")(not_empty)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class OpenAIRequest(BaseModel):
    """The sampling settings both OpenAI endpoints share; fields this server does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    n: StrictInt = Field(1, ge=1, le=1, description="one choice per request")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(OpenAIRequest):
    prompt: StrictStr | list[StrictInt] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False

    _prompt_not_empty = field_validator("prompt")(not_empty)


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


def event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def usage(job: Job) -> dict:
    prompt = int(job.ids.shape[1])
    return {"prompt_tokens": prompt, "completion_tokens": job.new_tokens, "total_tokens": prompt + job.new_tokens}


def openai_error(exc: APIError) -> dict:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
            422: "invalid_request_error", 429: "rate_limit_exceeded", 503: "service_unavailable",
            504: "timeout"}.get(exc.status, "server_error")
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code or kind}}


def epoch(created: str | None) -> int:

    return int(datetime.fromisoformat(created).timestamp()) if created else 0
