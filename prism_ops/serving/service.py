"""`prism-run --serve`: the ranks start once, load the model once and answer requests until stopped.

Rank 0 serves HTTP (`http.py`, OpenAI shapes) and answers JSON lines on stdin, one response
line each on stdout (for scripts):

    {"input": "text"}                             -> an embeddings response
    {"prompt": "text", "max_tokens": 8}           -> a completions response
    {"messages": [{"role": "user", ...}]}         -> a chat completions response
    (an "id" field is echoed back as "request")

SIGTERM or SIGINT on rank 0 stops taking requests, answers the queued ones and stops every rank
cleanly (exit 0). The other ranks leave signals to rank 0.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from .engine import Engine
from .openai_api import MAX_REQUEST_BYTES, ApiError, parse


def _endpoint(line: dict) -> str:
    if "messages" in line:
        return "chat"
    if "prompt" in line:
        return "completions"
    return "embeddings"


def read_stdin(engine: Engine, stream=sys.stdin, out=sys.stdout) -> None:
    """Answer JSON lines from `stream` (one response line each, in order) until its end."""
    lock = threading.Lock()

    def emit(obj):
        with lock:
            print(json.dumps(obj), file=out, flush=True)

    for n, raw in enumerate(_lines(stream), 1):
        if raw is None:
            emit({**ApiError(f"line {n} has more than {MAX_REQUEST_BYTES:,} characters, the most a request line "
                             "may have", status=413).body(), "request": None})
            continue
        if not raw.strip():
            continue
        rid = None
        try:
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise ApiError(f"line {n} is not valid JSON: {e}") from None
            if isinstance(body, dict):
                rid = body.pop("id", None)
                body.pop("stream", None)  # a line gets one whole response
            job = engine.prepare(parse(_endpoint(body) if isinstance(body, dict) else "embeddings", body,
                                       engine.served))

            def sink(event, rid=rid):
                kind, value = event
                if kind == "done":
                    emit({**value, "request": rid} if rid is not None else value)
                elif kind == "error":
                    emit({**value.body(), "request": rid})

            engine.submit(job, sink)
        except ApiError as e:
            emit({**e.body(), "request": rid})


def _lines(stream, limit: int = MAX_REQUEST_BYTES):
    """The lines of stream, each read at most limit + 1 characters at a time: a longer line is
    given as None (and skipped to its end) instead of being held whole."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith("\n"):
            yield line
            continue
        while line and not line.endswith("\n"):  # skip the rest of the oversized line
            line = stream.readline(limit + 1)
        yield None


def run_service(engine: Engine, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                http: bool = True, stdin=sys.stdin, log=sys.stderr) -> None:
    """Serve on every rank until rank 0 is stopped (signal, or the end of stdin without HTTP)."""
    if engine.comm.rank != 0:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when the service stops
        engine.run()
        return

    def stop(signum, frame):
        print(f"prism-run: {signal.Signals(signum).name}: answering the queued requests, then stopping",
              file=log, flush=True)
        engine.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server = None
    if http:
        # starlette and uvicorn are needed for HTTP only: a one-shot prism-run or a stdin-only
        # service runs without them.
        from .http import HttpThread, make_app

        server = HttpThread(make_app(engine, api_key), host, port)
        server.start()
    reader = threading.Thread(target=_read_then_maybe_stop, args=(engine, stdin, not http), name="prism-stdin",
                              daemon=True)
    reader.start()
    s = engine.served
    where = f"http://{host}:{port}" if http else "stdin"
    print(f"prism-run: serving {s.model} ({'decoder' if s.decoder else 'encoder'}) on {where} with "
          f"{engine.comm.size} ranks; loaded in {engine.load_s:.1f} s", file=log, flush=True)
    try:
        engine.run()
    finally:
        if server is not None:
            server.stop()
    h = engine.health()
    first = "-" if h["first_request_s"] is None else f"{h['first_request_s']:.3f} s"
    steady = "-" if h["steady_mean_s"] is None else f"{h['steady_mean_s']:.3f} s"
    print(f"prism-run: stopped after {h['served']} requests (first {first}, steady mean {steady})", file=log,
          flush=True)


def _read_then_maybe_stop(engine: Engine, stdin, stop_at_end: bool) -> None:
    if stdin is not None:
        read_stdin(engine, stdin)
    if stop_at_end:
        engine.stop_when_idle = True

