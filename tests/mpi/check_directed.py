"""Run under mpiexec by tests/strategy/test_directed_exchange.py: the causal point-to-point exchange
(`Communicator.isend_recv`) on an emulated link, raw and inside a decoder. Prints one JSON line
on rank 0.

    mpiexec -n 2 python tests/mpi/check_directed.py

1. Rank 0 sends 3 payloads of 25,000 bytes to rank 1 over an emulated 10 Mbit/s link with
   5 ms per message and never waits; rank 1 receives each no earlier than its arrival on a
   link that sends one payload after the other (k * 20 ms + 5 ms after the first send).
2. A small GPT-2 over the same kind of link (the arrival time travels with the bytes) gives
   the simulated output, and the counted bytes are the wire layout's.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from budgets import flip_one_code  # noqa: E402
from prism_ops import cost, hf, partition_bounds  # noqa: E402
from prism_ops.distributed.comm import Communicator  # noqa: E402
from prism_ops.distributed.link import EmulatedLink
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.distributed.control import bcast_json  # noqa: E402
from prism_ops.wire import payload_layouts  # noqa: E402

torch.set_num_threads(1)
SIZE, RATE, LATENCY = 25_000, 10.0, 5.0


def raw(comm):
    comm.link = EmulatedLink(RATE, LATENCY)
    bcast_json(comm, "start")
    t0 = time.monotonic()
    got = []
    for k in range(3):
        payload = torch.full((SIZE,), k, dtype=torch.uint8)
        dests, sources = ([1], []) if comm.rank == 0 else ([], [0])
        parts = comm.isend_recv(payload, dests, sources, [SIZE, 0], tag=500 + k, key="raw").wait()
        if comm.rank == 1:
            got.append((time.monotonic() - t0, int(parts[0].numel()), int(parts[0][0]), int(parts[0][-1])))
    sender_s = time.monotonic() - t0
    comm.link = None
    while comm.pending_sends:
        time.sleep(1e-3)
    out = comm.allgather_bytes(json.dumps(dict(got=got, sender_s=sender_s, sent=comm.sent["raw"])).encode())
    return [json.loads(o) for o in out]


def decoder(comm):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=300, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    runner = hf.configure(model, num_partitions=comm.size, segment_size=1, summary_bits=4, comm=comm)
    req = Request(ids=torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(1)), output="hidden")
    comm.link = EmulatedLink(100.0, 1.0)
    res = run_distributed(runner, comm, req if comm.rank == 0 else None, progress=False)
    comm.link = None
    if comm.rank != 0:
        return None
    config = hf.config_of(model)
    hf.configure(model, config)
    sim = run_simulated(model, req, comm.size)
    with flip_one_code():  # 4-bit summaries: one code step, which the last bits may flip (test_distributed)
        err_step = (run_simulated(model, req, comm.size).output - sim.output).abs().max().item()
    heads, channels = cost.ModelShape.from_config(model.config).row_shape(config.exchange)
    layouts = payload_layouts(config, partition_bounds(40, comm.size), causal=True, batch=1, heads=heads,
                              channels=channels, dtype=torch.float32)
    return dict(err_sim=(res.output - sim.output).abs().max().item(), scale=sim.output.abs().max().item(),
                err_step=err_step,
                bytes=res.bytes_per_layer, expected_bytes=sum(lay.nbytes for lay in layouts),
                per_rank=[lay.nbytes for lay in layouts])


def main():
    comm = Communicator(timeout_s=60)
    ranks = raw(comm)
    dec = decoder(comm)
    if comm.rank == 0:
        print(json.dumps(dict(raw=ranks, decoder=dec)), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - any failure must end the whole job, not hang it
        import traceback

        traceback.print_exc()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(1)
    sys.exit(0)
