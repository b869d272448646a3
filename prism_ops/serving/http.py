"""The service's HTTP side on rank 0: OpenAI-style routes (Starlette, served by uvicorn in a thread).

    POST /v1/embeddings          encoders
    POST /v1/completions         decoders; "stream": true gives server-sent events, token by token
    POST /v1/chat/completions    decoders, through the tokenizer's chat template
    GET  /v1/models, GET /health

Requests are checked and tokenized here, then queued on the engine in arrival order; many
clients may wait at once while the ranks run (embedding requests that queue together run as one
batch). With an API key every route but
/health needs `Authorization: Bearer <key>` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .engine import Engine
from .openai_api import MAX_REQUEST_BYTES, ApiError, chunk_body, parse, usage_chunk

MAX_BODY_BYTES = MAX_REQUEST_BYTES  # larger bodies are refused while they are read, before parsing


class _Sink:
    """Events from the engine's thread into this request's asyncio queue."""

    def __init__(self, loop):
        self.loop, self.queue = loop, asyncio.Queue()

    def __call__(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _error(e: ApiError) -> JSONResponse:
    headers = None if e.retry_after is None else {"Retry-After": str(e.retry_after)}
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _unauthorized() -> ApiError:
    # A fresh error each time: re-raising one instance would grow its traceback request by request.
    return ApiError("missing or wrong API key (Authorization: Bearer <key>)", status=401, kind="authentication_error")


def _too_large(what: str) -> ApiError:
    return ApiError(f"the request body has {what} bytes, more than the {MAX_BODY_BYTES:,} allowed", status=413)


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) by its Content-Length or, without one, as soon as it passes the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(f"{int(declared):,}")
    parts, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > MAX_BODY_BYTES:
            raise _too_large(f"over {MAX_BODY_BYTES:,}")
        parts.append(chunk)
    return b"".join(parts)


def make_app(engine: Engine, api_key: str | None = None) -> Starlette:
    served = engine.served

    def authorized(request: Request) -> bool:
        return _authorized(request, api_key)

    async def read(request: Request, endpoint: str):
        if not authorized(request):
            raise _unauthorized()
        raw = await _read_body(request)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON: {e}") from None
        return engine.prepare(parse(endpoint, body, served))

    async def answer(request: Request, endpoint: str):
        engine.note_arrival(1)  # a batch forming now may wait for this one (engine._gather)
        try:
            job = await read(request, endpoint)
            sink = _Sink(asyncio.get_running_loop())
            engine.submit(job, sink)
        except ApiError as e:
            return _error(e)
        finally:
            engine.note_arrival(-1)
        if not job.stream:
            while True:
                kind, value = await sink.queue.get()
                if kind == "done":
                    return JSONResponse(value)
                if kind == "error":
                    return _error(value)

        return StreamingResponse(_events(served, job, sink), media_type="text/event-stream")

    async def embeddings(request):
        return await answer(request, "embeddings")

    async def completions(request):
        return await answer(request, "completions")

    async def chat(request):
        return await answer(request, "chat")

    async def models(request):
        if not authorized(request):
            return _error(_unauthorized())
        return JSONResponse({"object": "list", "data": [{"id": served.model, "object": "model", "created": 0,
                                                         "owned_by": "prism-ops"}]})

    async def health(request):
        return JSONResponse(engine.health())

    return Starlette(routes=[
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


def _authorized(request: Request, api_key: str | None) -> bool:
    if not api_key:
        return True
    got = request.headers.get("authorization", "")
    return hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode())


async def _events(served, job, sink):
    """A streamed completion's server-sent events: its deltas as they come, then the closing chunk
    (with the usage, or followed by a usage chunk of its own with include_usage, as OpenAI does)."""
    while True:
        kind, value = await sink.queue.get()
        if kind == "delta":
            yield f"data: {json.dumps(chunk_body(served, job, value))}\n\n"
        elif kind == "done":
            finish = value["choices"][0]["finish_reason"]
            if job.include_usage:
                last = chunk_body(served, job, "", finish, prism=value["prism"])
                yield f"data: {json.dumps(last)}\n\n"
                last = usage_chunk(served, job, value["usage"])
            else:
                last = chunk_body(served, job, "", finish, prism=value["prism"], usage=value["usage"])
            yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"
            return
        else:
            yield f"data: {json.dumps(value.body())}\n\n"
            return

class HttpThread:
    """uvicorn serving the app in a daemon thread (rank 0's main thread runs the engine)."""

    def __init__(self, app, host: str, port: int):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="prism-http", daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        for _ in range(int(timeout_s / 0.05)):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        if not self.server.started:
            raise RuntimeError("the HTTP server did not start (is the port in use?)")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
