"""The OpenAI request and response shapes prism-run's service speaks, as pure functions.

    job = parse(endpoint, body, served)     # a checked ApiRequest, or ApiError (400 with an OpenAI error body)
    body = embeddings_body(served, results) / completion_body(...) / chunk_body(...)

Endpoints: "embeddings" (encoders), "completions" and "chat" (decoders). Embeddings take input
as a string, a list of strings, a list of token ids or a list of token-id lists, and answer in
`encoding_format` "float" or "base64" (little-endian float32, what the official client asks for
by default). Completions and chat take `stop` (a string or up to 4), `stream_options`
{"include_usage": true}, `seed` and `user`. Anything the service does not do (n > 1, logprobs,
echo, penalties, tools, ...) is refused by name rather than ignored, so a client never gets a
silently different answer.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

# Options a client may send that change nothing here when they have these values.
# (The last rank has the logits, but they are not sent back: logprobs stay refused by name.)
HARMLESS = {"n": 1, "best_of": 1, "logprobs": None, "top_logprobs": None, "echo": False,
            "suffix": None, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "tools": None,
            "tool_choice": None, "response_format": None, "parallel_tool_calls": None}
KNOWN = {
    "embeddings": {"model", "input", "encoding_format", "dimensions", "user"},
    "completions": {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stop",
                    "stream_options", "user"},
    "chat": {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
             "stream", "stop", "stream_options", "user"},
}
MAX_STOP = 4  # stop sequences per request, as OpenAI allows
MAX_TOKENS_DEFAULT = 16
MAX_REQUEST_BYTES = 8 * 2**20  # an HTTP body or a stdin line longer than this is refused while it is read


class ApiError(ValueError):
    """A request the service refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 retry_after: int | None = None):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind
        self.retry_after = retry_after  # seconds, sent as a Retry-After header (a 503 while the job re-forms)

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Served:
    """What the service runs: the model's name, whether it is a decoder, its position limit."""

    model: str
    decoder: bool
    max_positions: int | None
    width: int | None = None  # the embedding's length (`dimensions` must equal it)
    vocab_size: int | None = None  # token ids given as input must be below it


@dataclass
class ApiRequest:
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
    encoding_format: str = "float"  # embeddings: "float" or "base64"
    stop: list = field(default_factory=list)  # the text ends before the first of these
    include_usage: bool = False  # streamed: a last chunk with the usage and no choices
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


def parse(endpoint: str, body, served: Served) -> ApiRequest:
    """An ApiRequest from a request body (already decoded JSON), or ApiError naming what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", served.model)
    if model != served.model:
        raise ApiError(f"model {model!r} is not served here; this service runs {served.model!r}", "model")
    _check_fields(endpoint, body)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(f"user must be a string, got {user!r}", "user")
    if endpoint == "embeddings":
        return _embeddings(body, served)
    if not served.decoder:
        raise ApiError(f"{served.model} is an encoder: use /v1/embeddings", "model")
    chat, texts = _prompt(endpoint, body)
    limit = served.max_positions or 10**6
    max_tokens = _number(body, "max_tokens", MAX_TOKENS_DEFAULT, 1, limit, integer=True)
    if endpoint == "chat":
        max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, limit, integer=True)
    stream, include_usage = _streaming(body)
    return ApiRequest(endpoint, texts, max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0, 2),
                      top_p=_number(body, "top_p", 1.0, 0, 1), top_k=_number(body, "top_k", 0, 0, 10**6, integer=True),
                      seed=_number(body, "seed", 0, 0, 2**63 - 1, integer=True), stream=stream, chat=chat,
                      stop=_stop(body.get("stop")), include_usage=include_usage)


def _check_fields(endpoint: str, body: dict) -> None:
    """Every field is one this endpoint knows, or a harmless one at its harmless value."""
    for name, value in body.items():
        if name in KNOWN[endpoint]:
            continue
        if name in HARMLESS and value == HARMLESS[name]:
            continue
        if name == "logprobs" and value is False:  # chat's "no logprobs" (completions' 0 asks for some)
            continue
        if name in HARMLESS:
            raise ApiError(f"{name}={value!r} is not supported by this service", name)
        raise ApiError(f"unknown field {name!r} for this endpoint", name)


def _embeddings(body: dict, served: Served) -> ApiRequest:
    if served.decoder:
        raise ApiError(f"{served.model} is a decoder: use /v1/completions or /v1/chat/completions", "model")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(f"encoding_format must be 'float' or 'base64', got {fmt!r}", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != served.width):
        raise ApiError(f"dimensions={dims!r} is not supported by this service: {served.model}'s embeddings have "
                       f"{served.width} dimensions (send that, or leave dimensions out)", "dimensions")
    texts, ids = _embedding_input(body.get("input"), served)
    return ApiRequest("embeddings", texts, ids=ids, encoding_format=fmt)


def _prompt(endpoint: str, body: dict) -> tuple:
    """(chat messages or None, texts): a completion's one prompt, or a chat's messages."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError("prompt must be a non-empty string", "prompt")
        return None, [prompt]
    chat = body.get("messages")
    if not isinstance(chat, list) or not chat:
        raise ApiError("messages must be a non-empty list of {role, content}", "messages")
    for i, m in enumerate(chat):
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            raise ApiError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}", "messages")
    return chat, []


def _streaming(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) from stream and stream_options."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise ApiError("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
            options.get("include_usage", False), bool):
        raise ApiError(f"stream_options must be {{\"include_usage\": true|false}}, got {options!r}", "stream_options")
    return stream, options.get("include_usage", False)


def _stop(stop) -> list:
    """The stop sequences: None, a string, or a list of up to MAX_STOP non-empty strings."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"stop must be a string or a list of strings, got {stop!r}", "stop")
    if len(stops) > MAX_STOP:
        raise ApiError(f"stop has {len(stops)} sequences, more than the {MAX_STOP} allowed", "stop")
    if any(not s for s in stops):
        raise ApiError("stop must not contain empty strings", "stop")
    return stops


def _embedding_input(value, served: Served) -> tuple[list, list]:
    """(texts, token ids) of an embeddings input: a string, a list of strings, a list of token ids
    or a list of token-id lists. Token ids come back as lists (texts empty); texts with ids []."""
    what = "input must be a non-empty string, list of strings, list of token ids or list of token-id lists"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError(what, "input")
    if all(isinstance(t, str) for t in value):
        if any(not t.strip() for t in value):
            raise ApiError("input must not contain empty strings", "input")
        return value, []
    if all(_is_id(t) for t in value):
        value = [value]
    if not all(isinstance(t, list) for t in value) or not all(_is_id(i) for t in value for i in t):
        raise ApiError(what, "input")
    vocab = served.vocab_size
    for n, ids in enumerate(value):
        if not ids:
            raise ApiError(f"input[{n}] is an empty list of token ids", "input")
        bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
        if bad:
            raise ApiError(f"input{f'[{n}]' if len(value) > 1 else ''} has token id {bad[0]}, outside the "
                           f"vocabulary [0, {vocab})", "input")
    return [], value


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def encode_vector(vector, fmt: str = "float"):
    """A vector as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return list(vector)


def embeddings_body(served: Served, results: list, fmt: str = "float") -> dict:
    """results: one (vector, tokens, prism) per input."""
    tokens = sum(r[1] for r in results)
    return {"object": "list", "model": served.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(r[0], fmt)}
                     for i, r in enumerate(results)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "prism": _merge_prism([r[2] for r in results])}


def _merge_prism(parts: list) -> dict:
    parts = list({id(p): p for p in parts}.values())  # inputs that ran in one forward share its figures
    if len(parts) == 1:
        return parts[0]
    return {"bytes_sent": sum(p["bytes_sent"] for p in parts), "seconds": [p["seconds"] for p in parts],
            "partitions": parts[0]["partitions"]}


def completion_body(served: Served, job: ApiRequest, text: str, prompt_tokens: int, completion_tokens: int,
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


def chunk_body(served: Served, job: ApiRequest, delta: str, finish: str | None = None, prism: dict | None = None,
               usage: dict | None = None) -> dict:
    """One server-sent event of a streamed completion."""
    if job.endpoint == "chat":
        choice = {"index": 0, "delta": {"content": delta} if delta or finish is None else {}, "finish_reason": finish}
        obj, prefix = "chat.completion.chunk", "chatcmpl-"
    else:
        choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl-"
    out = {"id": prefix + job.id, "object": obj, "created": job.created, "model": served.model, "choices": [choice]}
    if job.include_usage:
        out["usage"] = None  # OpenAI's chunks carry usage null, then one last chunk has it
    if prism is not None:
        out["prism"] = prism
    if usage is not None:
        out["usage"] = usage
    return out


def usage_chunk(served: Served, job: ApiRequest, usage: dict) -> dict:
    """The last event of a stream with stream_options.include_usage: no choices, the usage."""
    obj, prefix = ("chat.completion.chunk", "chatcmpl-") if job.endpoint == "chat" else ("text_completion", "cmpl-")
    return {"id": prefix + job.id, "object": obj, "created": job.created, "model": served.model, "choices": [],
            "usage": usage}


def cut_at_stop(text: str, stops: list) -> tuple[str, bool]:
    """(text before the first stop sequence in it, whether one was found)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def safe_length(text: str, stops: list) -> int:
    """How much of text may be streamed now: all of it but a tail that could still grow into a
    stop sequence (a stop string may span tokens and chunks)."""
    keep = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = min(keep, len(text) - k)
                break
    return keep
