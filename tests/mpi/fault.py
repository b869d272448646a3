"""Run under mpiexec by tests/distributed/test_distributed.py: one rank fails inside a layer's attention.

    mpiexec -n 3 python tests/mpi/fault.py RANK raise|kill|stop

"raise": that rank raises; "kill": it is killed by SIGKILL; "stop": it stops itself with
SIGSTOP (heartbeats included: the others must find it silent after the 4 s timeout). The job
must end non-zero, never hang.
"""

import os
import signal
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from prism_ops import hf
from prism_ops.distributed.comm import Communicator
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.distributed.faults import guarded
from prism_ops.strategy import RankPartition

torch.set_num_threads(1)
victim, how = int(sys.argv[1]), sys.argv[2]
comm = Communicator(timeout_s=4)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=64, vocab_size=100, bos_token_id=0, eos_token_id=0)).eval()
runner = hf.configure(model, num_partitions=comm.size, segment_size=4, comm=comm)
real = RankPartition.attend


def faulty(self, layer, q, k, v, **kw):
    if comm.rank == victim and layer.index == 1:
        if how == "raise":
            raise RuntimeError("injected fault in layer 1")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "stop":
            print(f"rank {comm.rank} stopping, pid {os.getpid()}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(3600)
    return real(self, layer, q, k, v, **kw)


RankPartition.attend = faulty
req = Request(ids=torch.randint(0, 100, (1, 30)), output="hidden") if comm.rank == 0 else None
code = guarded(comm, lambda: run_distributed(runner, comm, req, progress=False), prog="fault")
if code:
    sys.exit(code)
print(f"rank {comm.rank} finished", flush=True)
