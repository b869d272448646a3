"""Master/worker runtime: one request through a PRISM model spread over MPI ranks.

Rank 0 takes the request (token ids `[B, N]`, or an image for a vision model), checks it, fixes
the partition bounds (equal, or weighted by relative device speeds), and sends every rank its
token ids with their absolute positions (Scatterv) and the padding mask (Bcast). Every rank
runs the same model on its own tokens, its attention layers exchanging summaries
(`prism_ops.strategy.rank`). Rank 0 then gathers what was asked:

    "embedding"  the sentence vector `[B, D]`: req.pooling (`prism_ops.pooling`; default: the mean
                 of the last hidden state over real tokens); each rank sends only what the
                 pooling needs of its own tokens (a partial sum and count for a mean), not its
                 hidden states
    "hidden"     the last hidden state `[B, N, d]`
    "logits"     a decoder's next-token logits after the last token `[B, V]`: the last rank sends
                 its last hidden row `[B, d]` (d floats, not V: 2.3 KB against 196 KB for
                 SmolLM2 on a slow link) and rank 0 applies the model's head to it
    generate=n   a decoder's n new tokens: the last rank decodes alone with its KV cache and
                 the summaries it cached at prefill (no traffic per token); with stream=True
                 it also sends each new token to rank 0 as it comes (`on_token` there), and
                 stops early when rank 0's on_token says so (a stop sequence)

The model is handed in as a `ModelRunner` (`prism_ops.request_types`; the Hugging Face one is what
`prism_ops.hf.configure` returns): its kind, positions, local forward, decoding and the partition
its layers run. This module knows no model family and imports neither the adapter nor transformers.
`prism_ops.in_process.run_simulated` gives the same results in one process with all partitions
simulated (`prism_ops.hf.configure(..., comm=None)`), which the tests compare against. Both build the
output through the same two steps (`local_output`: what a rank contributes; `assemble`: the
Result from every rank's part), and both scope one `prism_ops.strategy.RequestState` over the
forward and its decoding steps: nothing per-request is left on the model.
"""

from __future__ import annotations

import time

import torch

from prism_ops.ops.partitioned_attention import partition_bounds
from prism_ops.pooling import Pooling, combine, local_part
from prism_ops.request_types import (ModelRunner, Request, RequestError, Result, Sampling, check_request,
                                     default_positions)
from prism_ops.strategy import RequestState, request_scope
from prism_ops.strategy.payload import as_bytes
from prism_ops.tags import TAG_TOKEN, TAG_TOKEN_STOP

from .control import allgather_json, bcast_json

def run_distributed(runner: ModelRunner, comm, req: Request | None, eos=None, progress=True,
                    on_token=None) -> Result | None:
    """Serve one request over comm's ranks; req is read on rank 0 only (a RequestError there is
    passed on). runner: the model as `prism_ops.hf.configure(model, ..., comm=comm)` returned it.
    Returns the Result on rank 0, None elsewhere. Every rank raises RequestError
    for a bad request. Partition sizes follow the configured `weights` (relative device
    speeds), equal without them. With req.stream, rank 0's on_token(ids `[B]`) sees every new
    token while the last rank decodes; when it returns True, the last rank stops decoding at
    the next token it makes (tokens already made on the way are still returned)."""
    if getattr(runner.partition, "comm", None) is not comm:
        raise ValueError("run_distributed needs the runner that prism_ops.hf.configure(model, ..., comm=comm) "
                         "returned for this comm")
    kind = runner.kind
    times = {}
    t0 = time.perf_counter()
    comm.phase = "request"
    head, inputs, valid = _distribute(runner, comm, req, kind, runner.config.weights)
    dev = runner.device
    state = RequestState(bounds=head["bounds"], valid=valid.to(dev), ids=inputs.get("ids"),
                         positions=inputs.get("positions"))
    comm.reset_counters()
    times["scatter"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    c0, c1 = head["bounds"][comm.rank]
    last = comm.rank == comm.size - 1
    comm.phase = "forward"
    with torch.no_grad(), request_scope(state):
        h, cache = runner.forward_local(c0, c1, **{k: v.to(dev) for k, v in inputs.items()},
                                        use_cache=bool(head["generate"] and last))
        times["forward"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        stream = _TokenStream(comm, head, on_token)
        if head["generate"]:
            comm.phase = "generation token 1" if last else "generation"
        out = local_output(runner, head, h, cache, valid[:, c0:c1], last, eos, progress, stream.emit if last else None,
                            c0=c0)
        stream.finish(last)
        if head["generate"]:
            times["decode"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    comm.phase = "gather"
    got = comm.gatherv(out, allgather_json(comm, int(out.numel())))
    layers = runner.num_layers
    sent = comm.gatherv(as_bytes(torch.tensor(comm.bytes_sent(range(layers)), dtype=torch.int64)),
                        [8 * layers] * comm.size)
    times["gather"] = time.perf_counter() - t3
    times["total"] = time.perf_counter() - t0
    every = allgather_json(comm, {**times, **{f"attention {k}": v for k, v in state.seconds.items()}})
    if comm.rank != 0:
        return None
    return assemble(runner, head, got, torch.stack([s.view(torch.int64) for s in sent]).sum(0).tolist(),
                    {k: max(t.get(k, 0.0) for t in every) for k in every[-1] if not k.startswith("attention ")},
                    every)  # the slowest rank's seconds per phase, and every rank's


class _TokenStream:
    """New tokens from the last rank to rank 0's on_token while the last rank decodes.

    The last rank sends each token point to point (TAG_TOKEN) and an empty message at the end;
    rank 0 receives them as they come. When rank 0's on_token returns True (a stop sequence in
    the text), rank 0 sends b"stop" (TAG_TOKEN_STOP) and the last rank, which looks for it
    before each next token, stops decoding. Rank 0 sends exactly one TAG_TOKEN_STOP message per
    stream, b"stop" or else b"done" once the stream has ended, and the last rank takes exactly
    one (while decoding, or at the end), so none is left over for the next request.
    Waiting has no bound of its own: `Communicator.poll` raises once a rank goes silent
    (`liveness`), so a long healthy generation never times out. emit also keeps the last rank's
    phase ("generation token t") current, and checks that the other ranks are still heard from:
    a decoding rank cut off from them stops within the timeout.
    """

    def __init__(self, comm, head, on_token):
        self.comm, self.on_token, self.sends = comm, on_token, []
        self.active = bool(head["generate"] and head.get("stream"))
        self.made = 0
        self.answered = False  # the TAG_TOKEN_STOP message of this stream: sent (rank 0) or taken (last rank)

    def emit(self, ids: torch.Tensor) -> bool:
        """The last rank's new token; True: stop decoding."""
        self.made += 1
        self.comm.phase = f"generation token {self.made + 1}"
        # The decoding rank needs no message per token, so no wait would notice the others gone
        # (a cut link): check that they are still heard from, every token (cheap: `liveness`).
        self.comm.check_alive()
        if not self.active:
            return False
        if self.comm.rank == 0:  # one rank: it decodes and reads its own tokens
            return bool(self.on_token is not None and self.on_token(ids))
        self.sends.append(self.comm.isend(0, as_bytes(ids.long().cpu()).numpy().tobytes(), TAG_TOKEN, key="result"))
        msg = self.comm.poll(TAG_TOKEN_STOP)
        if msg is not None:
            self.answered = True
        return msg is not None and msg[1] == b"stop"

    def finish(self, last: bool) -> None:
        if not self.active:
            return
        if last and self.comm.rank != 0:
            self.sends.append(self.comm.isend(0, b"", TAG_TOKEN, key="result"))
            while not self.answered:  # rank 0's one answer, if it has not come yet
                self.answered = self.comm.poll(TAG_TOKEN_STOP) is not None
                if not self.answered:
                    time.sleep(1e-4)
        if self.comm.rank == 0 and not last:
            self._receive()
        while self.sends:
            self.comm.check_alive()
            self.sends = [s for s in self.sends if not self.comm.test(s)]

    def _answer(self, word: bytes) -> None:
        self.sends.append(self.comm.isend(self.comm.size - 1, word, TAG_TOKEN_STOP, key="result"))
        self.answered = True

    def _receive(self) -> None:
        while True:
            msg = self.comm.poll(TAG_TOKEN)  # raises if the decoding rank goes silent
            if msg is None:
                time.sleep(1e-4)
                continue
            if not msg[1]:
                if not self.answered:
                    self._answer(b"done")
                return
            if self.answered:  # made before the last rank saw the stop: not wanted
                continue
            if self.on_token is not None and self.on_token(torch.frombuffer(bytearray(msg[1]), dtype=torch.int64)):
                self._answer(b"stop")


def request_head(req: Request, B: int, N: int, bounds) -> dict:
    """What every rank must know of a request: sizes, bounds and options (JSON-able)."""
    return dict(B=B, N=N, bounds=bounds, padding=req.mask is not None, output=req.output, generate=req.generate,
                temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed, stream=req.stream,
                pooling=req.pooling.to_json())


def _distribute(runner, comm, req, kind, weights):
    """Rank 0 checks req and sends every rank what it needs: (head, inputs, valid `[B, N]`).

    head: the request's sizes, bounds and options (Bcast as JSON). inputs: this rank's
    ids and absolute positions (Scatterv), or the image (Bcast) for a vision model.
    valid: the padding mask (Bcast; every rank needs all of it for the summary counts).
    """
    P, p = comm.size, comm.rank
    head = None
    if p == 0:
        try:
            if isinstance(req, RequestError):  # found while reading the input
                raise req
            B, N = check_request(runner, req, P)
            bounds = [tuple(b) for b in req.bounds] if req.bounds is not None else partition_bounds(N, P, weights)
            if len(bounds) != P or bounds[0][0] != 0 or bounds[-1][1] != N or any(
                    a[1] != b[0] or a[0] >= a[1] for a, b in zip(bounds, bounds[1:] + [(N, N + 1)])):
                raise RequestError(f"bounds must be {P} contiguous non-empty chunks covering [0, {N}), got {bounds}")
            head = request_head(req, B, N, bounds)
            if kind == "vision":
                head["pixels"] = list(req.pixel_values.shape)
        except RequestError as e:
            head = dict(error=str(e))
    head = bcast_json(comm, head)
    if "error" in head:
        raise RequestError(head["error"])
    B, N = head["B"], head["N"]
    head["bounds"] = bounds = [tuple(b) for b in head["bounds"]]
    c0, c1 = bounds[p]
    if kind == "vision":
        data = comm.bcast_bytes(as_bytes(req.pixel_values.float()).numpy().tobytes() if p == 0 else None)
        inputs = dict(pixel_values=torch.frombuffer(bytearray(data), dtype=torch.float32).view(head["pixels"]))
    else:
        chunks = None
        if p == 0:
            pos = default_positions(B, N) if req.positions is None else req.positions.long()
            chunks = [as_bytes(torch.cat([req.ids[:, s:e].long(), pos[:, s:e]])) for s, e in bounds]
        mine = comm.scatterv(chunks, [2 * B * (e - s) * 8 for s, e in bounds]).view(torch.int64).view(2 * B, c1 - c0)
        inputs = dict(ids=mine[:B], positions=mine[B:])
    if head["padding"]:
        data = comm.bcast_bytes(as_bytes(req.mask.bool()).numpy().tobytes() if p == 0 else None)
        valid = torch.frombuffer(bytearray(data), dtype=torch.bool).view(B, N)
        inputs["mask"] = valid[:, c0:c1].long()
    else:
        valid = torch.ones(B, N, dtype=torch.bool)
    return head, inputs, valid


def local_output(runner, head, h, cache, valid_local, last, eos, progress, on_token=None, c0=0):
    """The bytes this rank contributes to what rank 0 gathers (its tokens start at column c0)."""
    B = head["B"]
    if head["generate"]:
        new = torch.empty(B, 0, dtype=torch.long)
        if last:
            new = runner.decode(h[:, -1], cache, head["N"], Sampling.from_head(head), eos, progress, on_token).cpu()
        return as_bytes(new.long())
    if head["output"] == "embedding":
        return as_bytes(local_part(h, valid_local.to(h.device), c0, Pooling.from_json(head.get("pooling"))).cpu())
    if head["output"] == "hidden":
        return as_bytes(h.float().cpu())
    # logits: the last hidden row (float32 holds any model dtype exactly); `assemble` applies the head
    return as_bytes(h[:, -1].float().cpu() if last else torch.empty(0))


def assemble(runner, head, got, bytes_per_layer: list, seconds: dict, seconds_per_rank: list = ()) -> Result:
    """Rank 0: the Result from every rank's bytes, the bytes sent per layer and the seconds (the
    slowest rank's per phase, and every rank's)."""
    B, bounds = head["B"], head["bounds"]
    ids = None
    if head["generate"]:
        output = ids = got[-1].view(torch.int64).view(B, -1)
    elif head["output"] == "embedding":
        output = combine([g.view(torch.float64).view(B, -1) for g in got], Pooling.from_json(head.get("pooling")))
    elif head["output"] == "hidden":
        output = torch.cat([g.view(torch.float32).view(B, e - s, -1) for g, (s, e) in zip(got, bounds)], 1)
    else:
        with torch.no_grad():
            output = runner.next_logits(got[-1].view(torch.float32).view(B, -1).to(runner.device)).float().cpu()
    return Result(output=output, token_ids=None if ids is None else ids.tolist(), bytes_per_layer=bytes_per_layer,
                  seconds=seconds, bounds=bounds, seconds_per_rank=list(seconds_per_rank))
