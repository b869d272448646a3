"""The service's engine: every rank loads the model once and answers requests until stopped.

Rank 0 keeps a FIFO of checked jobs (`submit`, from the HTTP server's thread or the stdin
reader). Its main thread takes one job at a time and, per forward pass, tells the other ranks
to join (`bcast_json`: {"op": "forward"} or {"op": "stop"}); every rank then runs
`run_distributed`. An idle service is healthy: the other ranks wait for the next command as long
as rank 0 is heard from (`prism_ops.distributed.liveness`), and rank 0, idle, checks that they
are; a rank silent past the communicator's timeout ends the service, idle or not.

Events go back to whoever submitted the job through its sink: ("delta", text) for each streamed
token, then ("done", body) or ("error", ApiError). A fault during a forward (a rank that stalls
or fails) answers every job in flight or queued with a 503 and then ends the whole job non-zero
(`prism_ops.distributed.faults`).
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time

import torch

from ..distributed import Request, RequestError, run_distributed
from ..distributed.control import bcast_json
from .openai_api import ApiError, Job, Served, completion_body, embeddings_body


class Engine:
    """One rank's part of the service. `run()` returns when rank 0 has stopped the service."""

    def __init__(self, model, tokenizer, comm, served: Served, *, load_s: float = 0.0):
        self.model, self.tok, self.comm, self.served = model, tokenizer, comm, served
        self.eos = tokenizer.eos_token_id if served.decoder else None
        self.jobs: queue.Queue = queue.Queue()
        self.stopping = threading.Event()  # no new jobs; finish the queued ones, then stop
        self.stop_when_idle = False  # stdin-only service: stop once the queue is empty
        self.load_s, self.request_s = load_s, []
        self.lock = threading.Lock()
        self.pending = 0
        self._current = None  # the sink of the job running now
        # The HTTP thread tokenizes while the engine decodes: a fast tokenizer must not be used
        # from two threads at once ("Already borrowed").
        self.tok_lock = threading.Lock()

    # -- rank 0: jobs in ------------------------------------------------------------------

    def prepare(self, job: Job) -> Job:
        """Tokenize and check a job before it is queued (ApiError for what the model cannot take)."""
        limit = self.served.max_positions
        param = "input" if job.endpoint == "embeddings" else ("messages" if job.chat else "prompt")
        if limit is not None:
            # A token stands for a few characters: a text of over 64 characters per position
            # cannot fit, so it is refused before being tokenized whole.
            for text in job.texts + [m["content"] for m in job.chat or []]:
                if len(text) > 64 * limit:
                    raise ApiError(f"{param} has {len(text):,} characters, far more than the model's {limit} "
                                   "positions", param)
        with self.tok_lock:
            if job.chat is not None:
                if not getattr(self.tok, "chat_template", None):
                    raise ApiError(f"{self.served.model} has no chat template: use /v1/completions", "messages")
                job.texts = [self.tok.apply_chat_template(job.chat, add_generation_prompt=True, tokenize=False)]
            self.tok.model_max_length = 10**9  # checked here, against the model's positions
            special = job.chat is None
            job.ids = [self.tok(t, add_special_tokens=special)["input_ids"] for t in job.texts]
        for i, ids in enumerate(job.ids):
            if len(ids) < self.comm.size:
                raise ApiError(f"{param}{f'[{i}]' if len(job.ids) > 1 else ''} has {len(ids)} tokens, fewer than "
                               f"the {self.comm.size} ranks (each rank needs one)", param)
            if limit is not None and len(ids) + job.max_tokens > limit:
                extra = f" + max_tokens {job.max_tokens}" if job.max_tokens else ""
                raise ApiError(f"{param} has {len(ids)} tokens{extra}, more than the model's {limit} positions", param)
        return job

    def submit(self, job: Job, sink) -> None:
        """Queue a prepared job; sink(event) receives its events (from the engine's thread)."""
        if self.stopping.is_set():
            raise ApiError("the service is shutting down", status=503, kind="service_unavailable")
        with self.lock:
            self.pending += 1
        self.jobs.put((job, sink))

    def health(self) -> dict:
        steady = self.request_s[1:]
        return {"status": "stopping" if self.stopping.is_set() else "ok", "model": self.served.model, "pid": os.getpid(),
                "ranks": self.comm.size, "queued": self.jobs.qsize(), "served": len(self.request_s),
                "load_s": self.load_s, "first_request_s": self.request_s[0] if self.request_s else None,
                "steady_mean_s": sum(steady) / len(steady) if steady else None,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    # -- every rank ---------------------------------------------------------------------------

    def run(self) -> None:
        if self.comm.rank != 0:
            while True:
                self.comm.phase = "serving (idle)"
                if bcast_json(self.comm, None, key="control")["op"] != "forward":
                    return
                try:
                    run_distributed(self.model, self.comm, None, eos=self.eos, progress=False)
                except RequestError:
                    pass  # rank 0 answers it; every rank raised the same and goes on
        try:
            while True:
                self.comm.phase = "serving (idle)"
                try:
                    job, sink = self.jobs.get(timeout=0.1)
                except queue.Empty:
                    if self.stopping.is_set() or (self.stop_when_idle and self.pending == 0):
                        break
                    self.comm.check_alive()  # a worker stopped while the service is idle ends it too
                    continue
                t0 = time.perf_counter()
                self._current = sink
                self._answer(job, sink)
                self._current = None
                self.request_s.append(time.perf_counter() - t0)
                with self.lock:
                    self.pending -= 1
        except BaseException as e:
            self._fail_all(e, self._current)
            raise
        bcast_json(self.comm, {"op": "stop"}, key="control")

    def _forward(self, req: Request, on_token=None):
        bcast_json(self.comm, {"op": "forward"}, key="control")
        return run_distributed(self.model, self.comm, req, eos=self.eos, progress=False, on_token=on_token)

    def _prism(self, res) -> dict:
        return {"bytes_sent": int(sum(res.bytes_per_layer)), "bytes_per_layer": res.bytes_per_layer,
                "seconds": res.seconds, "partitions": self.comm.size}

    def _answer(self, job: Job, sink) -> None:
        try:
            if job.endpoint == "embeddings":
                results = []
                for ids in job.ids:
                    res = self._forward(Request(ids=torch.tensor([ids]), output="embedding"))
                    results.append((res.output[0].tolist(), len(ids), self._prism(res)))
                sink(("done", embeddings_body(self.served, results)))
                return
            ids = job.ids[0]
            made, text = [], [""]
            eos = self.eos

            def on_token(t):
                tid = int(t[0])
                if eos is not None and tid == eos:
                    return
                made.append(tid)
                with self.tok_lock:
                    new = self.tok.decode(made, skip_special_tokens=True)
                if job.stream and len(new) > len(text[0]):
                    sink(("delta", new[len(text[0]):]))
                text[0] = new

            req = Request(ids=torch.tensor([ids]), generate=job.max_tokens, temperature=job.temperature,
                          top_k=job.top_k, top_p=job.top_p, seed=job.seed, stream=True)
            res = self._forward(req, on_token)
            got = res.token_ids[0]
            finish = "stop" if (eos is not None and got and got[-1] == eos) else "length"
            with self.tok_lock:
                final = self.tok.decode([t for t in got if t != eos], skip_special_tokens=True)
            if job.stream and len(final) > len(text[0]):
                sink(("delta", final[len(text[0]):]))
            completion = len(got) - (finish == "stop")
            sink(("done", completion_body(self.served, job, final, len(ids), completion, finish, self._prism(res))))
        except RequestError as e:  # every rank raised it and goes on
            sink(("error", ApiError(str(e))))

    def _fail_all(self, err: BaseException, current=None) -> None:
        """A fault: answer every job in flight or queued with a 503 before the job ends."""
        self.stopping.set()
        e = ApiError(f"the service stopped: {type(err).__name__}: {err}", status=503, kind="service_unavailable")
        if current is not None:
            current(("error", e))
        while True:
            try:
                _, sink = self.jobs.get_nowait()
            except queue.Empty:
                break
            sink(("error", e))
        time.sleep(1.0)  # let the HTTP thread send the 503s before the job is aborted
