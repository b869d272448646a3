"""The OpenAI request and response shapes prism-run's service speaks, as pure functions.

    job = parse(endpoint, body, served)     # a checked Job, or ApiError (400 with an OpenAI error body)
    body = embeddings_body(served, results) / completion_body(...) / chunk_body(...)

Endpoints: "embeddings" (encoders), "completions" and "chat" (decoders). Anything the service
does not do (n > 1, logprobs, echo, stop sequences, penalties, ...) is refused by name rather
than ignored, so a client never gets a silently different answer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

# Options a client may send that change nothing here when they have these values.
HARMLESS = {"n": 1, "best_of": 1, "logprobs": None, "top_logprobs": None, "echo": False, "stop": None,
            "suffix": None, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "user": None,
            "stream_options": None, "encoding_format": "float", "dimensions": None, "tools": None,
            "tool_choice": None, "response_format": None, "parallel_tool_calls": None}
KNOWN = {
    "embeddings": {"model", "input"},
    "completions": {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream"},
    "chat": {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
             "stream"},
}
MAX_TOKENS_DEFAULT = 16
MAX_REQUEST_BYTES = 8 * 2**20  # an HTTP body or a stdin line longer than this is refused while it is read


class ApiError(ValueError):
    """A request the service refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Served:
    """What the service runs: the model's name, whether it is a decoder, its position limit."""

    model: str
    decoder: bool
    max_positions: int | None


@dataclass
class Job:
    """One checked request. texts: the inputs to embed (embeddings) or the one prompt."""

    endpoint: str
    texts: list
    ids: list = field(default_factory=list)  # token ids per text, filled in by the service
    max_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stream: bool = False
    chat: list | None = None  # chat messages, turned into a prompt by the tokenizer's template
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _number(body, name, default, lo, hi, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ApiError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not lo <= value <= hi:
        raise ApiError(f"{name} must be in [{lo}, {hi}], got {value}", name)
    return value


def parse(endpoint: str, body, served: Served) -> Job:
    """A Job from a request body (already decoded JSON), or ApiError naming what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", served.model)
    if model != served.model:
        raise ApiError(f"model {model!r} is not served here; this service runs {served.model!r}", "model")
    for name, value in body.items():
        if name in KNOWN[endpoint]:
            continue
        if name in HARMLESS and value == HARMLESS[name]:
            continue
        if name in HARMLESS:
            raise ApiError(f"{name}={value!r} is not supported by this service", name)
        raise ApiError(f"unknown field {name!r} for this endpoint", name)
    if endpoint == "embeddings":
        if served.decoder:
            raise ApiError(f"{served.model} is a decoder: use /v1/completions or /v1/chat/completions", "model")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError("input must be a non-empty string or a non-empty list of strings", "input")
        if any(not t.strip() for t in texts):
            raise ApiError("input must not contain empty strings", "input")
        return Job("embeddings", texts)
    if not served.decoder:
        raise ApiError(f"{served.model} is an encoder: use /v1/embeddings", "model")
    chat = None
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError("prompt must be a non-empty string", "prompt")
        texts = [prompt]
    else:
        chat = body.get("messages")
        if not isinstance(chat, list) or not chat:
            raise ApiError("messages must be a non-empty list of {role, content}", "messages")
        for i, m in enumerate(chat):
            if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                    or not isinstance(m.get("content"), str)):
                raise ApiError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}", "messages")
        texts = []
    limit = served.max_positions or 10**6
    max_tokens = _number(body, "max_tokens", MAX_TOKENS_DEFAULT, 1, limit, integer=True)
    if endpoint == "chat":
        max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, limit, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(f"stream must be true or false, got {stream!r}", "stream")
    return Job(endpoint, texts, max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, 2),
               top_p=_number(body, "top_p", 1.0, 0, 1), top_k=_number(body, "top_k", 0, 0, 10**6, integer=True),
               seed=_number(body, "seed", 0, 0, 2**63 - 1, integer=True), stream=stream, chat=chat)


def embeddings_body(served: Served, results: list) -> dict:
    """results: one (vector, tokens, prism) per input."""
    tokens = sum(r[1] for r in results)
    return {"object": "list", "model": served.model,
            "data": [{"object": "embedding", "index": i, "embedding": r[0]} for i, r in enumerate(results)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "prism": _merge_prism([r[2] for r in results])}


def _merge_prism(parts: list) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {"bytes_sent": sum(p["bytes_sent"] for p in parts), "seconds": [p["seconds"] for p in parts],
            "partitions": parts[0]["partitions"]}


def completion_body(served: Served, job: Job, text: str, prompt_tokens: int, completion_tokens: int,
                    finish: str, prism: dict) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if job.endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + job.id, "object": obj, "created": job.created, "model": served.model, "choices": [choice],
            "usage": usage, "prism": prism}


def chunk_body(served: Served, job: Job, delta: str, finish: str | None = None, prism: dict | None = None,
               usage: dict | None = None) -> dict:
    """One server-sent event of a streamed completion."""
    if job.endpoint == "chat":
        choice = {"index": 0, "delta": {"content": delta} if delta or finish is None else {}, "finish_reason": finish}
        obj, prefix = "chat.completion.chunk", "chatcmpl-"
    else:
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl-"
    out = {"id": prefix + job.id, "object": obj, "created": job.created, "model": served.model, "choices": [choice]}
    if prism is not None:
        out["prism"] = prism
    if usage is not None:
        out["usage"] = usage
    return out
