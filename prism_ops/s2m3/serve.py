"""prism-serve: S2M3 requests routed through shared modules spread over MPI ranks.

    prism-place --devices devices.yaml --tasks tasks.yaml --json plan.json
    mpirun -n 3 prism-serve --plan plan.json --requests requests.jsonl

One rank per device of the plan (rank i = the plan's device i). Each rank loads only the modules
placed on it (identical ones once). Rank 0 reads the requests (JSON lines `{"id", "model",
"seed"}`; the seed draws the example inputs), sends each modality straight to the rank of the
encoder that reads it, and collects the results. A node runs once all its inputs have arrived;
its output goes to the rank of every node that reads it, or back to rank 0 from the task's last
node. So the encoders of one request run in parallel on their ranks. Each rank runs its ready
nodes earliest request first, so requests that share a module are served in arrival order. Every message is point-to-point bytes
(`Communicator.isend` / `poll`): a JSON header and the tensor.

Output: one JSON line per request, in request order: `{"id", "model", "output", "latency_s"}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import heapq
import itertools

import torch

from .placement import PlacementError

TAG_WORK, TAG_RESULT, TAG_STOP = 11, 12, 13


def pack(header: dict, tensor: torch.Tensor) -> bytes:
    t = tensor.detach().contiguous().cpu()
    head = json.dumps({**header, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}).encode()
    return len(head).to_bytes(8, "little") + head + t.view(torch.uint8).numpy().tobytes()


def unpack(data: bytes):
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8 : 8 + n])
    t = torch.frombuffer(bytearray(data[8 + n :]), dtype=torch.uint8)
    return head, t.view(getattr(torch, head["dtype"])).view(head["shape"])


def check_plan(plan: dict, num_ranks: int):
    """(devices, size, models, rank of each part); PlacementError names what is wrong."""
    from .suite import MODELS, add_models

    try:
        devices, size, models, where = plan["devices"], plan["size"], plan["models"], plan["plan"]
    except (KeyError, TypeError):
        raise PlacementError("plan must have devices, size, models and plan (write it with prism-place --json)") from None
    try:
        add_models(plan.get("custom"))
    except ValueError as e:
        raise PlacementError(f"plan: {e}") from None
    if not isinstance(devices, list) or len(devices) != num_ranks:
        raise PlacementError(f"the plan has {len(devices)} devices but the job has {num_ranks} ranks (one per device)")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise PlacementError(f"plan: unknown model(s) {unknown}")
    rank = {}
    for m in models:
        for part, _ in MODELS[m][1].values():
            if part not in where or where[part] not in devices:
                raise PlacementError(f"plan: part {part!r} of {m!r} is not placed on a device of the plan")
            rank[part] = devices.index(where[part])
    spread = {}
    for part, spec in (plan.get("prism") or {}).items():
        if part not in rank:
            raise PlacementError(f"plan: prism names part {part!r}, which no model of the plan uses")
        if not (part.startswith("vit") or part == "minilm"):
            raise PlacementError(f"plan: prism spreads transformer encoders (vit-*, minilm), not {part!r}")
        group = spec.get("devices", [])
        if len(group) < 2 or any(d not in devices for d in group) or len(set(group)) != len(group):
            raise PlacementError(f"plan: prism {part!r} needs 2 or more distinct devices of the plan, got {group!r}")
        rank[part] = devices.index(group[0])  # the group's first rank leads: inputs in, output out
        spread[part] = ([devices.index(d) for d in group], spec)
    return devices, size, models, rank, spread


def read_requests(lines, models) -> list[dict]:
    reqs, ids = [], set()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rid, model, seed = r["id"], r["model"], int(r.get("seed", 0))
        except (ValueError, KeyError, TypeError):
            raise PlacementError(f"request line {i}: expected {{\"id\", \"model\", \"seed\"}}, got {line.strip()!r}") from None
        if model not in models:
            raise PlacementError(f"request line {i}: model {model!r} is not in the plan {models}")
        if rid in ids:
            raise PlacementError(f"request line {i}: id {rid!r} is used twice")
        ids.add(rid)
        reqs.append({"id": rid, "model": model, "seed": seed})
    return reqs


class Server:
    """One rank's share of the plan: its modules, its inbox and its FIFO of ready nodes."""

    def __init__(self, comm, plan):
        from .modules import Registry
        from .suite import MODELS, node_module

        self.comm = comm
        _, self.size, self.models, self.rank_of, spread = check_plan(plan, comm.size)
        self.MODELS = MODELS
        reg, self.modules = Registry(), {}
        for m in self.models:  # only the parts placed on this rank
            for node, (part, _) in MODELS[m][1].items():
                if self.rank_of[part] == comm.rank and part not in self.modules:
                    self.modules[part] = reg.add(node_module(m, node, self.size))
        # PRISM inside S2M3: an encoder spread over a group of ranks, each holding a copy and
        # a contiguous slice of the tokens (`prism_ops.distributed`).
        self.groups = {}
        for part, (ranks, spec) in sorted(spread.items()):
            sub = comm.split(comm.rank in ranks)  # collective: every rank, same order
            if sub is None:
                continue
            node = next(n for m in self.models for n, (p, _) in MODELS[m][1].items() if p == part)
            model = next(m for m in self.models if any(p == part for p, _ in MODELS[m][1].values()))
            mod = self.modules.get(part) or node_module(model, node, self.size)
            self.modules[part] = mod
            from prism_ops import hf

            hf.configure(mod.net, num_partitions=sub.size, segment_size=int(spec.get("segment_size", 16)),
                         comm=sub, **{k: v for k, v in spec.items() if k not in ("devices", "segment_size")})
            self.groups[part] = (sub, [r for r in ranks if r != ranks[0]])
        # Ready nodes run earliest request first: a shared module serves requests in the order
        # they arrived, and a request's head runs as soon as its inputs are in.
        self.waiting, self.ready, self.sends = {}, [], []
        self._tie = itertools.count()

    def dag(self, model):
        return {node: srcs for node, (_, srcs) in self.MODELS[model][1].items()}

    def part(self, model, node):
        return self.MODELS[model][1][node][0]

    def deliver(self, seq, req, model, node, src, tensor):
        dest = self.rank_of[self.part(model, node)]
        header = {"seq": seq, "req": req, "model": model, "node": node, "src": src}
        if dest == self.comm.rank:
            self.arrive(header, tensor)
        else:
            self.sends.append(self.comm.isend(dest, pack(header, tensor), TAG_WORK))

    def run_spread(self, part, seq, req, model, node, inputs):
        """Run a spread encoder with its group; the lead returns its output, members None."""
        from prism_ops.distributed import Request, run_distributed

        sub, members = self.groups[part]
        (x,) = inputs.values()
        if sub.rank == 0:  # the lead hands the input to the group, in its own queue order
            for r in members:
                self.sends.append(self.comm.isend(r, pack({"seq": seq, "req": req, "model": model, "node": node,
                                                           "src": "member"}, x), TAG_WORK))
        kind = self.modules[part].kind
        ask = Request(pixel_values=x, output="hidden") if kind == "vision" else Request(ids=x, output="embedding")
        with torch.no_grad():
            res = run_distributed(self.modules[part].net, sub, ask if sub.rank == 0 else None, progress=False)
        if res is None:
            return None
        return res.output[:, 0] if kind == "vision" else res.output

    def arrive(self, header, tensor):
        if header["src"] == "member":  # a spread encoder's input, forwarded by its group's lead
            self._push(header, {"member": tensor})
            return
        key = (json.dumps(header["req"]), header["model"], header["node"])
        got = self.waiting.setdefault(key, {})
        got[header["src"]] = tensor
        if len(got) == len(self.dag(header["model"])[header["node"]]):
            self._push(header, self.waiting.pop(key))

    def _push(self, header, inputs):
        item = (header["seq"], header["req"], header["model"], header["node"], inputs)
        heapq.heappush(self.ready, (header["seq"], next(self._tie), item))

    def step(self) -> bool:
        """Receive what has arrived and run one ready node; False when there was nothing to do."""
        busy = False
        while (msg := self.comm.poll(TAG_WORK)) is not None:
            self.arrive(*unpack(msg[1]))
            busy = True
        if self.ready:
            seq, req, model, node, inputs = heapq.heappop(self.ready)[2]
            dag = self.dag(model)
            part = self.part(model, node)
            if part in self.groups:
                out = self.run_spread(part, seq, req, model, node, inputs)
                if out is None:  # a member of the group: the lead carries the output on
                    return True
            else:
                out = self.modules[part](*[inputs[s] for s in dag[node]])
            readers = [n for n, srcs in dag.items() if node in srcs]
            for n in readers:
                self.deliver(seq, req, model, n, node, out)
            if not readers:  # the task's output goes back to rank 0
                data = pack({"req": req}, out)
                if self.comm.rank == 0:
                    self.results.append(unpack(data))
                else:
                    self.sends.append(self.comm.isend(0, data, TAG_RESULT))
            busy = True
        self.sends = [s for s in self.sends if not self.comm.test(s)]
        return busy

    def serve(self, requests: list[dict] | None):
        """Rank 0: run all requests and return {id: (output, latency)}; other ranks: serve until told to stop."""
        from .suite import example_inputs

        self.results = []
        if self.comm.rank != 0:
            while self.comm.poll(TAG_STOP) is None:
                if not self.step():
                    time.sleep(1e-4)
            while self.sends:
                self.sends = [s for s in self.sends if not self.comm.test(s)]
            return None
        start, done = {}, {}
        for seq, r in enumerate(requests):  # every modality of every request goes out at once, in order
            x = example_inputs(self.size, seed=r["seed"])
            start[json.dumps(r["id"])] = time.perf_counter()
            for node, srcs in self.dag(r["model"]).items():
                for s in srcs:
                    if s.startswith("input:"):
                        self.deliver(seq, r["id"], r["model"], node, s, x[s[6:]])
        while len(done) < len(requests):
            if not self.step():
                time.sleep(1e-4)
            while (msg := self.comm.poll(TAG_RESULT)) is not None:
                self.results.append(unpack(msg[1]))
            for head, out in self.results:
                key = json.dumps(head["req"])
                if key in done:
                    raise RuntimeError(f"request {head['req']!r} was answered twice")
                done[key] = (out, time.perf_counter() - start[key])
            self.results = []
        for r in range(1, self.comm.size):
            self.sends.append(self.comm.isend(r, b"stop", TAG_STOP))
        while self.sends:
            self.sends = [s for s in self.sends if not self.comm.test(s)]
        return done


def main(argv=None) -> None:
    from prism_ops.distributed import CollectiveError, Communicator, guarded
    from prism_ops.distributed.control import bcast_json

    ap = argparse.ArgumentParser(prog="prism-serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True, help="a plan written by prism-place --json")
    ap.add_argument("--requests", help="JSON lines {id, model, seed}; default: standard input")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    comm = Communicator()

    class BadInput(CollectiveError):
        exit_code = 2

    def run():
        from .place_cli import read_file

        # Every rank checks the plan the same way; rank 0 checks the requests and tells the others.
        try:
            plan = read_file(args.plan)
            check_plan(plan, comm.size)
        except PlacementError as e:
            raise BadInput(str(e)) from None
        reqs = err = None
        if comm.rank == 0:
            try:
                lines = open(args.requests).read().splitlines() if args.requests else sys.stdin.read().splitlines()
                reqs = read_requests(lines, plan["models"])
            except (OSError, PlacementError) as e:
                err = str(e)
        err = bcast_json(comm, err)
        if err:
            raise BadInput(err)
        server = Server(comm, plan)
        comm.barrier()  # latencies count from when every rank serves
        done = server.serve(reqs)
        if comm.rank == 0:
            for r in reqs:
                out, lat = done[json.dumps(r["id"])]
                print(json.dumps({"id": r["id"], "model": r["model"], "output": out.tolist(), "latency_s": lat}))
            sys.stdout.flush()

    guarded(comm, run, prog="prism-serve")


if __name__ == "__main__":
    main()

