"""S2M3 serving: one rank's share of a plan (`Server`), and s2m3-serve's whole job on a rank
(`serve_requests`).

One rank per device of the plan (rank i = the plan's device i). Each rank loads only the modules
placed on it (identical ones once). Rank 0 reads the requests (JSON lines `{"id", "model",
"seed"}`; the seed draws the example inputs), sends each modality straight to the rank of the
encoder that reads it, and collects the results. A node runs once all its inputs have arrived;
its output goes to the rank of every node that reads it, or back to rank 0 from the task's last
node. So the encoders of one request run in parallel on their ranks. Each rank runs its ready
nodes earliest request first, so requests that share a module are served in arrival order.
Rank 0 dispatches in a thread of its own: it sends a request's inputs out when the request
arrives and takes results in when they come back, while its main thread computes (otherwise a
request would wait for the node rank 0 is running; `prism_ops.s2m3.load` models both).
Every message is point-to-point bytes (`Communicator.isend` / `poll`) in the layout of
`prism_ops.s2m3.messages`. A plan may spread a transformer encoder over a group of ranks with
PRISM attention (`prism_ops.hf.configure`, `prism_ops.distributed.runtime.run_distributed`).
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
import time

import torch

from prism_ops import hf
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.distributed.control import bcast_json
from prism_ops.distributed.faults import agree_rank0
from prism_ops.tags import TAG_RESULT, TAG_STOP, TAG_WORK

from .files import parse_text
from .messages import pack, request_key, unpack, work_header
from .modules import Registry
from .plan import CheckedPlan, check_plan, read_inputs
from .suite import example_inputs


class Server:
    """One rank's share of the plan: its modules, its inbox and its FIFO of ready nodes."""

    def __init__(self, comm, plan: CheckedPlan, slowdown: float = 1.0, loaded: dict | None = None,
                 dispatch_thread: bool = True):
        """`slowdown` >= 1: after each node, sleep (slowdown - 1) times its run time, so this rank
        stands for a device that much slower (benchmarks of unequal devices). `loaded` ({part:
        Module}, optional): modules already built, used instead of building them again and
        filled with those built here (several plans in one process; spread encoders excepted, as
        PRISM reconfigures them). `dispatch_thread=False`: rank 0 dispatches only between its own
        nodes, in its one thread (`load.simulate(caller_holds=True)` models it)."""
        ok = isinstance(slowdown, (int, float)) and not isinstance(slowdown, bool)
        if not (ok and 1.0 <= slowdown < float("inf")):
            raise ValueError(f"slowdown must be a finite number >= 1, got {slowdown!r}")
        self.comm, self.slowdown, self.dispatch_thread = comm, float(slowdown), bool(dispatch_thread)
        self.model_size, self.models, self.rank_of, self.catalog = plan.model_size, plan.models, plan.rank, plan.catalog
        reg, self.modules = Registry(), {}
        loaded = {} if loaded is None else loaded
        for m in self.models:  # only the parts placed on this rank
            for node, (part, _) in self.catalog.nodes(m).items():
                if self.rank_of[part] != comm.rank or part in self.modules:
                    continue
                if part in loaded and part not in plan.spread:
                    self.modules[part] = loaded[part]
                    continue
                self.modules[part] = reg.add(self.catalog.node_module(m, node, self.model_size))
                if part not in plan.spread:
                    loaded[part] = self.modules[part]
        # PRISM inside S2M3: an encoder spread over a group of ranks, each holding a copy and
        # a contiguous slice of the tokens (`prism_ops.distributed`).
        self.groups = {}
        for part, (ranks, config) in sorted(plan.spread.items()):
            sub = comm.split(comm.rank in ranks)  # collective: every rank, same order
            if sub is None:
                continue
            node = next(n for m in self.models for n, (p, _) in self.catalog.nodes(m).items() if p == part)
            model = next(m for m in self.models if any(p == part for p, _ in self.catalog.nodes(m).values()))
            mod = self.modules.get(part) or self.catalog.node_module(model, node, self.model_size)
            self.modules[part] = mod
            runner = hf.configure(mod.net, config, comm=sub)  # the plan's resolved setting (`plan.prism_config`)
            self.groups[part] = (sub, [r for r in ranks if r != ranks[0]], runner)
        # Ready nodes run earliest request first: a shared module serves requests in the order
        # they arrived, and a request's head runs as soon as its inputs are in.
        self.waiting, self.ready, self.sends = {}, [], []
        self._tie = itertools.count()
        # Rank 0's dispatch thread and its main thread share the inbox, the ready queue, the
        # pending sends and the results: each holds this lock while it touches them, never
        # while a node computes.
        self.mutex = threading.Lock()

    def dag(self, model):
        return self.catalog.dag(model)

    def part(self, model, node):
        return self.catalog.part(model, node)

    def deliver(self, seq, req, model, node, src, tensor):
        dest = self.rank_of[self.part(model, node)]
        header = work_header(seq, req, model, node, src)
        if dest == self.comm.rank:
            self.arrive(header, tensor)
        else:
            self.sends.append(self.comm.isend(dest, pack(header, tensor), TAG_WORK))

    def run_spread(self, part, seq, req, model, node, inputs):
        """Run a spread encoder with its group; the lead returns its output, members None."""
        sub, members, runner = self.groups[part]
        (x,) = inputs.values()
        if sub.rank == 0:  # the lead hands the input to the group, in its own queue order
            for r in members:
                with self.mutex:
                    self.sends.append(self.comm.isend(r, pack(work_header(seq, req, model, node, "member"), x),
                                                      TAG_WORK))
        kind = self.modules[part].kind
        ask = Request(pixel_values=x, output="hidden") if kind == "vision" else Request(ids=x, output="embedding")
        with torch.no_grad():
            res = run_distributed(runner, sub, ask if sub.rank == 0 else None, progress=False)
        if res is None:
            return None
        return res.output[:, 0] if kind == "vision" else res.output

    def arrive(self, header, tensor):
        if header["src"] == "member":  # a spread encoder's input, forwarded by its group's lead
            self._push(header, {"member": tensor})
            return
        key = (request_key(header["req"]), header["model"], header["node"])
        got = self.waiting.setdefault(key, {})
        got[header["src"]] = tensor
        if len(got) == len(self.dag(header["model"])[header["node"]]):
            self._push(header, self.waiting.pop(key))

    def _push(self, header, inputs):
        item = (header["seq"], header["req"], header["model"], header["node"], inputs)
        heapq.heappush(self.ready, (header["seq"], next(self._tie), item))

    def _flush(self, limit_s: float = 0.01):
        """Before computing, let pending sends finish (briefly): a large message moves only while
        its sender is inside MPI, so one left pending would wait out the whole node, and its
        reader, idle on another rank, with it."""
        t0 = time.perf_counter()
        while self.sends and time.perf_counter() - t0 < limit_s:
            self.sends = [s for s in self.sends if not self.comm.test(s)]

    def _receive(self) -> bool:
        """Take in every node input that has arrived (hold the mutex)."""
        got = False
        while (msg := self.comm.poll(TAG_WORK)) is not None:
            self.arrive(*unpack(msg[1]))
            got = True
        return got

    def step(self) -> bool:
        """Receive what has arrived and run one ready node; False when there was nothing to do."""
        with self.mutex:
            busy = self._receive()
            item = None
            if self.ready:
                self._flush()
                item = heapq.heappop(self.ready)[2]
            self.sends = [s for s in self.sends if not self.comm.test(s)]
        if item is None:
            return busy
        seq, req, model, node, inputs = item
        dag = self.dag(model)
        part = self.part(model, node)
        if part in self.groups:
            out = self.run_spread(part, seq, req, model, node, inputs)
            if out is None:  # a member of the group: the lead carries the output on
                return True
        else:
            t0 = time.perf_counter()
            out = self.modules[part](*[inputs[s] for s in dag[node]])
            if self.slowdown > 1.0:  # a slower device, emulated: idle for the extra time
                time.sleep((self.slowdown - 1.0) * (time.perf_counter() - t0))
        readers = [n for n, srcs in dag.items() if node in srcs]
        with self.mutex:
            for n in readers:
                self.deliver(seq, req, model, n, node, out)
            if not readers:  # the task's output goes back to rank 0
                data = pack({"req": req}, out)
                if self.comm.rank == 0:
                    self.results.append(unpack(data))
                else:
                    self.sends.append(self.comm.isend(0, data, TAG_RESULT))
            self.sends = [s for s in self.sends if not self.comm.test(s)]
        return True

    def serve(self, requests: list[dict] | None, at: list[float] | None = None):
        """Rank 0: run all requests and return {id: (output, latency)}; other ranks: serve until told
        to stop. `at` (rank 0, optional): when each request arrives, in s from the start (in
        order; default: all at once); a request's latency counts from its arrival."""
        self.results = []
        # Every loop below polls (`Communicator.poll` checks liveness) or checks liveness itself,
        # so a rank that goes silent ends the job after the communicator's timeout.
        self.comm.phase = "serving"
        if self.comm.rank != 0:
            while self.comm.poll(TAG_STOP) is None:
                if not self.step():
                    time.sleep(1e-4)
            self._drain_sends()
            return None
        start, done, t0, due = {}, {}, time.perf_counter(), 0
        at = at or [0.0] * len(requests)

        def release(now):  # every modality of every request that is due goes out at once, in order
            nonlocal due
            while due < len(requests) and t0 + at[due] <= now:
                r = requests[due]
                x = example_inputs(self.model_size, seed=r["seed"])
                start[request_key(r["id"])] = t0 + at[due]
                for node, srcs in self.dag(r["model"]).items():
                    for s in srcs:
                        if s.startswith("input:"):
                            self.deliver(due, r["id"], r["model"], node, s, x[s[6:]])
                due += 1

        def collect():  # results that came back, and rank 0's own
            while (msg := self.comm.poll(TAG_RESULT)) is not None:
                self.results.append(unpack(msg[1]))
            for head, out in self.results:
                key = request_key(head["req"])
                if key in done:
                    raise RuntimeError(f"request {head['req']!r} was answered twice")
                done[key] = (out, time.perf_counter() - start[key])
            self.results = []

        def dispatch():  # what rank 0 does besides computing: requests out, inputs and results in
            with self.mutex:
                release(time.perf_counter())
                self._receive()
                collect()
                self.sends = [s for s in self.sends if not self.comm.test(s)]

        if self.dispatch_thread:
            self._serve_threaded(dispatch, lambda: len(done) < len(requests))
        else:
            while len(done) < len(requests):
                dispatch()
                if not self.step():
                    time.sleep(1e-4)
        for r in range(1, self.comm.size):
            self.sends.append(self.comm.isend(r, b"stop", TAG_STOP))
        self._drain_sends()
        return done

    def _serve_threaded(self, dispatch, pending) -> None:
        """Rank 0: `dispatch` in its own thread, every half millisecond, while this thread computes
        ready nodes, until nothing is `pending`. An error in either ends both and is raised here."""
        stop, failed = threading.Event(), []

        def loop():
            try:
                while not stop.is_set():
                    dispatch()
                    time.sleep(5e-4)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
                failed.append(e)

        thread = threading.Thread(target=loop, name="s2m3-dispatch", daemon=True)
        thread.start()
        try:
            while pending() and thread.is_alive():
                if not self.step():
                    time.sleep(1e-4)
        finally:
            stop.set()
            thread.join()
        if failed:
            raise failed[0]

    def _drain_sends(self):
        """Wait until every pending send has left, as long as every rank is heard from."""
        while self.sends:
            self.comm.check_alive()
            self.sends = [s for s in self.sends if not self.comm.test(s)]


def serve_requests(comm, plan_path: str, requests_path: str | None = None,
                   devices_path: str | None = None) -> list[dict] | None:
    """s2m3-serve on this rank: rank 0 reads and checks every input (`plan.read_inputs`: the plan,
    against the devices file's devices in rank order when given, and the requests) and sends the
    verdict to every rank, so a bad input stops all ranks alike, before any model loads and before
    any collective that only some ranks would enter; the others check the plan rank 0 read. Then
    serve them all, and on rank 0 return one `{"id", "model", "output", "latency_s"}` per request,
    in request order (None elsewhere). `faults.BadInput` (exit code 2 under `guarded`) for a bad
    input; on rank 0 its cause carries the original traceback."""
    read = agree_rank0(comm, lambda: read_inputs(plan_path, comm.size, requests_path, devices_path,
                                                 sys.stdin.buffer))
    plan, reqs, text, names = read if comm.rank == 0 else (None, None, None, None)
    checked = bcast_json(comm, {"plan": text, "devices": names})
    if comm.rank != 0:  # the same checks of the same text: a failure here is a bug, which ends the job
        plan = check_plan(parse_text(checked["plan"], plan_path), comm.size, checked["devices"], plan_path)
    comm.phase = "loading"
    server = Server(comm, plan)
    comm.barrier()  # latencies count from when every rank serves
    done = server.serve(reqs)
    if comm.rank != 0:
        return None
    out = []
    for r in reqs:
        output, latency = done[request_key(r["id"])]
        out.append({"id": r["id"], "model": r["model"], "output": output.tolist(), "latency_s": latency})
    return out
