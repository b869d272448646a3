"""The service's engine: every rank loads the model once and answers requests until stopped.

Rank 0 keeps a FIFO of checked jobs (`submit`, from the HTTP server's thread or the stdin
reader). Its main thread takes the next job; embedding jobs that queued while the ranks were
busy are taken with it and their texts run as one padded batch of up to `batch_tokens` tokens
(`batching`: every row split over the ranks as it would be alone; 0: one text per forward);
texts under `split_min_tokens` are dealt to the ranks whole instead and each rank runs its own,
packed end to end in one sequence where the model allows it (`_whole`).
Greedy completions whose prompts have the same number of tokens, queued together, run as one
batch (their prefill in one forward, then the last rank decodes all of them at once, until each
has what it asked for); other completions, and prompts of other lengths, run one at a time: a
decoder's padded batch would leave padding inside the last rank's KV cache. Per forward pass it tells the other ranks to join (`bcast_json`: {"op": "forward"} or {"op": "stop"}); every rank then runs
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

from ..distributed.runtime import run_distributed

from ..distributed.control import bcast_json
from ..in_process import run_simulated
from ..pooling import Pooling, combine, local_part
from ..request_types import Request, RequestError, too_long
from ..strategy.payload import as_bytes
from .batching import batch_request, deal, pack, padded_request, plan
from .openai_api import ApiError, ApiRequest, Served, completion_body, cut_at_stop, embeddings_body, safe_length

# The most tokens one packed forward of whole texts holds: its attention is one dense T x T
# product under a block-diagonal mask, which past a few hundred tokens costs more than the
# padding packing saves.
PACK_TOKENS = 256


class Engine:
    """One rank's part of the service. `run()` returns when rank 0 has stopped the service."""

    def __init__(self, runner, tokenizer, comm, served: Served, *, load_s: float = 0.0, pooling: Pooling | None = None,
                 batch_tokens: int = 8192, split_min_tokens: int = 0, raw: bool = False):
        """runner: the model as `prism_ops.hf.configure(model, ..., comm=comm)` returned it.
        split_min_tokens: an embedding text shorter than this runs whole on one rank with the
        exact model (`_embed_whole`); 0: every text is split over the ranks.
        raw: answer in token ids and vectors, for a supervising front end that writes the text
        and the JSON itself (`bridge.py`): ("vectors", [(float32 array, tokens, prism)]) for
        embeddings; ("token", id) per generated token, then ("done", {"finish", "prism"})."""
        self.runner, self.tok, self.comm, self.served = runner, tokenizer, comm, served
        self.pooling = pooling or Pooling()
        self.batch_tokens = batch_tokens
        self.split_min_tokens = split_min_tokens
        # Whole texts run packed (`_whole`) where the model packs: checked here, with the model's
        # load, rather than in the first request.
        self.packs = bool(split_min_tokens and batch_tokens and comm.size > 1 and runner.packs)
        self.raw = raw
        self.cancelled: set = set()  # raw: ids of completions the front end needs no more of (a stop hit)
        self._held = None  # a job taken from the queue that did not fit the batch: the next one
        # Requests the HTTP side is reading and checking now: a batch waits a little for them
        # (never longer than half the last forward), so clients that answered at once join it;
        # with none arriving (one client) nothing waits.
        self.arriving = 0
        self._last_forward_s = 0.0
        self._last_batch = 1  # jobs in the last batch `_gather` made: more than one means load
        self.eos = tokenizer.eos_token_id if served.decoder else None
        self.jobs: queue.Queue = queue.Queue()
        self.stopping = threading.Event()  # no new jobs; finish the queued ones, then stop
        self.stop_when_idle = False  # stdin-only service: stop once the queue is empty
        self.load_s, self.request_s = load_s, []
        self.forwards = 0  # forward passes run (fewer than requests when they were batched)
        self.lock = threading.Lock()
        self.pending = 0
        self._current = []  # the sinks of the jobs running now
        # The HTTP thread tokenizes while the engine decodes: a fast tokenizer must not be used
        # from two threads at once ("Already borrowed").
        self.tok_lock = threading.Lock()

    # -- rank 0: jobs in ------------------------------------------------------------------

    def prepare(self, job: ApiRequest) -> ApiRequest:
        """Tokenize and check a job before it is queued (ApiError for what the model cannot take)."""
        return prepare(job, self.tok, self.served, self.comm.size, self.tok_lock, self.split_min_tokens)

    def submit(self, job: ApiRequest, sink) -> None:
        """Queue a prepared job; sink(event) receives its events (from the engine's thread)."""
        if self.stopping.is_set():
            raise ApiError("the service is shutting down", status=503, kind="service_unavailable")
        with self.lock:
            self.pending += 1
        self.jobs.put((job, sink))

    def note_arrival(self, n: int) -> None:
        """+1 when the HTTP side starts reading a request, -1 once it is queued or refused."""
        with self.lock:
            self.arriving += n

    def health(self) -> dict:
        steady = self.request_s[1:]
        return {"status": "stopping" if self.stopping.is_set() else "ok", "model": self.served.model, "pid": os.getpid(),
                "ranks": self.comm.size, "queued": self.jobs.qsize(), "served": len(self.request_s),
                "forwards": self.forwards, "batch_tokens": self.batch_tokens, "pooling": self.pooling.describe(),
                "whole_texts_packed": self.packs,
                "load_s": self.load_s, "first_request_s": self.request_s[0] if self.request_s else None,
                "steady_mean_s": sum(steady) / len(steady) if steady else None,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    # -- every rank ---------------------------------------------------------------------------

    def run(self) -> None:
        if self.comm.rank != 0:
            while True:
                self.comm.phase = "serving (idle)"
                order = bcast_json(self.comm, None, key="control")
                if order["op"] == "whole":
                    self.comm.phase = "serving (whole texts)"
                    self._send_whole(order["rows"])
                    continue
                if order["op"] != "forward":
                    return
                try:
                    run_distributed(self.runner, self.comm, None, eos=self.eos, progress=False)
                except RequestError:
                    pass  # rank 0 answers it; every rank raised the same and goes on
        try:
            while True:
                self.comm.phase = "serving (idle)"
                try:
                    first = self._next(timeout=0.1)
                except queue.Empty:
                    if self.stopping.is_set() or (self.stop_when_idle and self.pending == 0):
                        break
                    self._last_batch = 1  # idle for a while: the load has gone, the next batch waits for none
                    self.comm.check_alive()  # a worker stopped while the service is idle ends it too
                    continue
                t0 = time.perf_counter()
                batch = self._gather(first)
                self._current = [sink for _, sink in batch]
                if self.raw:  # the front end counts a fault against the requests running, not those queued
                    for sink in self._current:
                        sink(("start", None))
                if first[0].endpoint == "embeddings":
                    self._embed(batch)
                else:
                    self._complete(batch)
                self._current = []
                self.request_s += [time.perf_counter() - t0] * len(batch)
                with self.lock:
                    self.pending -= len(batch)
        except BaseException as e:
            self._fail_all(e, self._current)
            raise
        bcast_json(self.comm, {"op": "stop"}, key="control")

    def _next(self, timeout=None):
        if self._held is not None:
            held, self._held = self._held, None
            return held
        return self.jobs.get(timeout=timeout) if timeout is not None else self.jobs.get_nowait()

    def _gather(self, first) -> list:
        """first, and the jobs queued behind it that can run with it within batch_tokens:
        embeddings, or greedy completions with prompts of first's length (`_joins`)."""
        batch = [first]
        rows, longest = len(first[0].ids), max(map(len, first[0].ids))
        deadline = time.perf_counter() + min(0.05, 0.5 * self._last_forward_s)
        under_load = self._last_batch > 1
        try:
            if not self.batch_tokens or not (first[0].endpoint == "embeddings" or _greedy(first[0])):
                return batch  # runs alone (and ends the load: `finally`)
            while True:
                try:
                    nxt = self._next()
                except queue.Empty:
                    # Linger while requests are being read (inside MPI: `arriving`), or, under load (the
                    # last batch held several jobs), until this batch holds as many: the clients the
                    # last batch answered are sending their next. A forward's fixed cost (its weights
                    # read once) is shared by every text in it, so a batch that closed on the first
                    # arrival would cost about a forward of its own. It stops waiting as soon as it is
                    # full (jobs queued by then still join), or at the deadline (load that fell); after
                    # a batch of one, or a spell with no job, nothing waits.
                    waiting = self.arriving > 0 or (under_load and len(batch) < self._last_batch)
                    if waiting and time.perf_counter() < deadline:
                        time.sleep(0.0005)
                        continue
                    return batch
                job = nxt[0]
                new_long = max([longest, *map(len, job.ids)])
                if not _joins(first[0], job) or (rows + len(job.ids)) * new_long > self.batch_tokens:
                    self._held = nxt
                    return batch
                batch.append(nxt)
                rows, longest = rows + len(job.ids), new_long
        finally:
            self._last_batch = len(batch)

    def _embed(self, batch: list) -> None:
        """The texts of the embedding jobs in batch, in padded forwards of up to batch_tokens
        tokens (one text per forward without batching); each job answered once."""
        rows = [ids for job, _ in batch for ids in job.ids]
        owner = [k for k, (job, _) in enumerate(batch) for _ in job.ids]
        out, failed = [None] * len(rows), {}
        short = [i for i, r in enumerate(rows) if len(r) < self.split_min_tokens] if self.comm.size > 1 else []
        if short:
            self._embed_whole(rows, short, out)
        split = [i for i in range(len(rows)) if out[i] is None]
        if self.batch_tokens:
            groups = [[split[j] for j in g] for g in plan([rows[i] for i in split], self.batch_tokens,
                                                          aligned=self.runner.config.halo == 0)]
        else:
            groups = [[i] for i in split]
        for g in groups:
            weights = self.runner.config.weights if self.batch_tokens else None
            req = batch_request([rows[i] for i in g], self.comm.size, weights, output="embedding",
                                pooling=self.pooling)
            try:
                res = self._forward(req)
            except RequestError as e:  # every rank raised it and goes on
                for i in g:
                    failed.setdefault(owner[i], ApiError(str(e)))
                continue
            prism = {**self._prism(res), "batch": len(g)}
            for j, i in enumerate(g):
                vector = res.output[j].float().numpy() if self.raw else res.output[j].tolist()
                out[i] = (vector, len(rows[i]), prism)
        at = 0
        for k, (job, sink) in enumerate(batch):
            mine, at = out[at:at + len(job.ids)], at + len(job.ids)
            if k in failed:
                sink(("error", failed[k]))
            elif self.raw:
                sink(("vectors", mine))
            else:
                sink(("done", embeddings_body(self.served, mine, job.encoding_format)))

    def _embed_whole(self, rows: list, short: list, out: list) -> None:
        """Texts too short to gain from splitting (rows[i] for i in short), each run whole by
        one rank with the exact model: one text stays on rank 0, more are dealt out (`deal`) and
        every rank runs its own at once, no message between layers; out[i] gets their answers."""
        lengths = [len(rows[i]) for i in short]
        dealt = deal(lengths, self.comm.size if len(short) > 1 else 1)
        mine = [rows[short[j]] for j in dealt[0]]
        t0 = time.perf_counter()
        if len(dealt) > 1:
            bcast_json(self.comm, {"op": "whole", "rows": [[rows[short[j]] for j in d] for d in dealt]}, key="control")
            got = self.comm.gatherv(as_bytes(self._whole(mine)), self._whole_bytes(dealt))
            vectors = [g.view(torch.float32).view(len(d), self.served.width) for g, d in zip(got, dealt)]
        else:
            vectors = [self._whole(mine)]
        self.forwards += 1
        self._last_forward_s = time.perf_counter() - t0
        seconds = {"total": time.perf_counter() - t0}
        for d, v in zip(dealt, vectors):
            prism = {"bytes_sent": 0, "bytes_per_layer": [0] * self.runner.num_layers, "seconds": seconds,
                     "partitions": 1, "whole": True, "batch": len(d)}
            for j, vec in zip(d, v):
                out[short[j]] = (vec.numpy() if self.raw else vec.tolist(), lengths[j], prism)

    def _send_whole(self, dealt: list) -> None:
        """A rank other than 0: its texts of `_embed_whole` (dealt: every rank's), run and sent to rank 0."""
        self.comm.gatherv(as_bytes(self._whole(dealt[self.comm.rank])), self._whole_bytes(dealt))

    def _whole_bytes(self, dealt: list) -> list:
        """The bytes each rank sends rank 0 for its dealt texts: one float32 vector a text."""
        return [4 * self.served.width * len(d) for d in dealt]

    def _whole(self, rows: list) -> torch.Tensor:
        """`[len(rows), width]` float32: each text through the exact model, packed end to end in
        forwards of up to PACK_TOKENS tokens where the model allows it (`self.packs`: the
        matrix products then skip the padding a padded batch would run), else in padded batches
        of up to batch_tokens tokens (one text a forward without batching)."""
        out = torch.empty(len(rows), self.served.width, dtype=torch.float32)
        if not rows:  # fewer texts than ranks: this one has none
            return out
        if self.packs:
            budget = min(self.batch_tokens, PACK_TOKENS, self.runner.max_positions or PACK_TOKENS)
            with torch.no_grad():
                for g in pack(rows, budget):
                    h, valid = self.runner.forward_packed([rows[i] for i in g])
                    out[g] = combine([local_part(h.cpu(), valid.cpu(), 0, self.pooling)], self.pooling)
            return out
        groups = plan(rows, self.batch_tokens) if self.batch_tokens else [[i] for i in range(len(rows))]
        with self.runner.exact() as model:
            for g in groups:
                res = run_simulated(model, padded_request([rows[i] for i in g], output="embedding",
                                                          pooling=self.pooling), 1)
                out[g] = res.output.float()
        return out

    def _forward(self, req: Request, on_token=None):
        bcast_json(self.comm, {"op": "forward"}, key="control")
        self.forwards += 1
        t0 = time.perf_counter()
        res = run_distributed(self.runner, self.comm, req, eos=self.eos, progress=False, on_token=on_token)
        self._last_forward_s = time.perf_counter() - t0
        return res

    def _prism(self, res) -> dict:
        return {"bytes_sent": int(sum(res.bytes_per_layer)), "bytes_per_layer": res.bytes_per_layer,
                "seconds": res.seconds, "partitions": self.comm.size}

    def _complete(self, batch: list) -> None:
        """Completions, one prompt per row of one forward (a batch: greedy, prompts of one length;
        else a single job). Each job's text ends before its first stop sequence, nothing after it
        is streamed (a tail that could grow into one is held back), and once every row has what
        it asked for (max_tokens, eos or a stop) on_token tells the last rank to stop decoding
        (`run_distributed`), so the ranks are free for the next job."""
        rows = [(_RawDecoding if self.raw else _Decoding)(job, sink, self) for job, sink in batch]
        first = batch[0][0]
        try:
            req = Request(ids=torch.tensor([job.ids[0] for job, _ in batch]),
                          generate=max(job.max_tokens for job, _ in batch), temperature=first.temperature,
                          top_k=first.top_k, top_p=first.top_p, seed=first.seed, stream=True)
            res = self._forward(req, lambda t: all([row.take(int(x)) for row, x in zip(rows, t.tolist())]))
        except RequestError as e:  # every rank raised it and goes on
            for job, sink in batch:
                sink(("error", ApiError(str(e))))
            return
        prism = {**self._prism(res), "batch": len(batch)}
        for row in rows:
            row.close(prism)

    def _fail_all(self, err: BaseException, current=None) -> None:
        """A fault: answer every job in flight or queued with a 503 before the job ends."""
        self.stopping.set()
        e = ApiError(f"the service stopped: {type(err).__name__}: {err}", status=503, kind="service_unavailable")
        for sink in current or []:
            sink(("error", e))
        if self._held is not None:
            self._held[1](("error", e))
            self._held = None
        for _, sink in self.drop_queued():
            sink(("error", e))
        time.sleep(1.0)  # let the HTTP thread send the 503s before the job is aborted

    def drop_queued(self) -> list:
        """Take every queued job off the queue (not those running or held): their (job, sink) pairs."""
        dropped = []
        while True:
            try:
                dropped.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        with self.lock:
            self.pending -= len(dropped)
        return dropped


def prepare(job: ApiRequest, tok, served: Served, ranks: int, tok_lock, split_min_tokens: int = 0) -> ApiRequest:
    """Tokenize and check a job before it is queued (ApiError for what the model cannot take):
    every text within the model's positions and at least one token per rank, unless it is an
    embedding text under split_min_tokens (it runs whole on one rank). Used by rank 0's engine and
    by the supervising front end (`frontend.py`), which does this work for rank 0."""
    limit = served.max_positions
    param = "input" if job.endpoint == "embeddings" else ("messages" if job.chat else "prompt")
    for text in job.texts + [m["content"] for m in job.chat or []]:  # before it is tokenized whole
        why = too_long(limit, chars=len(text), subject=param)
        if why:
            raise ApiError(why, param)
    if job.endpoint == "embeddings" and job.ids:  # token ids: checked against the vocabulary in parse
        job.texts = [""] * len(job.ids)
    else:
        with tok_lock:
            if job.chat is not None:
                if not getattr(tok, "chat_template", None):
                    raise ApiError(f"{served.model} has no chat template: use /v1/completions", "messages")
                job.texts = [tok.apply_chat_template(job.chat, add_generation_prompt=True, tokenize=False)]
            special = job.chat is None  # verbose=False: the length is checked here, against the model's positions
            job.ids = [tok(t, add_special_tokens=special, verbose=False)["input_ids"] for t in job.texts]
    for i, ids in enumerate(job.ids):
        whole = job.endpoint == "embeddings" and len(ids) < split_min_tokens
        if len(ids) < ranks and not whole:
            raise ApiError(f"{param}{f'[{i}]' if len(job.ids) > 1 else ''} has {len(ids)} tokens, fewer than "
                           f"the {ranks} ranks (each rank needs one)", param)
        why = too_long(limit, tokens=len(ids), generate=job.max_tokens, subject=param, generating="max_tokens {}")
        if why:
            raise ApiError(why, param)
    return job


def _greedy(job: ApiRequest) -> bool:
    return job.endpoint != "embeddings" and job.temperature == 0


def _joins(first: ApiRequest, job: ApiRequest) -> bool:
    """Whether job may run in one forward with first: both embeddings, or both greedy
    completions of prompts with the same number of tokens (one row each, no padding)."""
    if first.endpoint == "embeddings":
        return job.endpoint == "embeddings"
    return _greedy(first) and _greedy(job) and len(job.ids[0]) == len(first.ids[0])


class _RawDecoding:
    """A completion for a front end: each token id as it comes, done at eos, max_tokens or when
    the front end cancels it (it found a stop sequence in the text)."""

    def __init__(self, job: ApiRequest, sink, engine: Engine):
        self.job, self.sink, self.engine = job, sink, engine
        self.made, self.finish = 0, None

    def take(self, tid: int) -> bool:
        if self.finish is not None:
            return True
        if self.job.id in self.engine.cancelled:
            self.finish = "stop"
            return True
        if self.engine.eos is not None and tid == self.engine.eos:
            self.finish = "stop"
            return True
        self.made += 1
        self.sink(("token", tid))
        if self.made >= self.job.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def close(self, prism: dict) -> None:
        self.engine.cancelled.discard(self.job.id)
        self.sink(("done", {"finish": self.finish or "length", "prism": prism}))


class _Decoding:
    """One completion's tokens as the last rank makes them: its text so far, what of it has been
    streamed, and whether it is done (max_tokens, eos, or a stop sequence in its text).
    engine: whatever has the tokenizer (`tok`, `tok_lock`), `eos` and `served`: rank 0's Engine,
    or the front end decoding what rank 0 sends it."""

    def __init__(self, job: ApiRequest, sink, engine):
        self.job, self.sink, self.engine = job, sink, engine
        self.made, self.text = [], ""  # tokens so far; their text, cut before a stop sequence
        self.sent, self.finish = 0, None  # characters streamed; why it ended

    def take(self, tid: int) -> bool:
        """The next token of this row; True once the completion needs no more."""
        if self.finish is not None:
            return True
        eng, job = self.engine, self.job
        if eng.eos is not None and tid == eng.eos:
            self.finish = "stop"
            return True
        self.made.append(tid)
        with eng.tok_lock:
            text = eng.tok.decode(self.made, skip_special_tokens=True)
        self.text, hit = cut_at_stop(text, job.stop)
        upto = len(self.text) if hit else safe_length(self.text, job.stop)
        if job.stream and upto > self.sent:
            self.sink(("delta", self.text[self.sent:upto]))
            self.sent = upto
        if hit:
            self.finish = "stop"
        elif len(self.made) >= job.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def close(self, prism: dict) -> None:
        """The whole text (streamed: the rest of it, held back until now) and the closing body."""
        job = self.job
        if job.stream and len(self.text) > self.sent:
            self.sink(("delta", self.text[self.sent:]))
        self.sink(("done", completion_body(self.engine.served, job, self.text, len(job.ids[0]), len(self.made),
                                           self.finish or "length", prism)))
