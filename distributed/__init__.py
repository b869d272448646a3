"""MPI layer of prism-ops (installed as `prism_ops.distributed`).

    comm = Communicator()                                   # one per rank (mpi4py, COMM_WORLD)
    hf.configure(model, PrismConfig(num_partitions=comm.size, segment_size=16), comm=comm)
    handshake(comm, fingerprint(model, config_of(model), model_name="minilm", dtype="float32"))
    result = run_distributed(model, comm, request)          # the Result on rank 0

- comm.py: the transport, the one place MPI is called (buffers only, byte counters). What a
  wait does besides is a layer each: fault_reports.py (rank 0 polls for another rank's
  failure), watch.py (this rank's phase, silent ranks; the heartbeats: liveness.py), link.py (an
  emulated slow link). tags.py: every message tag. hooks.py: the one test hook.
- faults.py: the fault policy (`guarded`, error classes, `abort`).
- control.py: JSON control messages; handshake.py: same model and settings on every rank.
- runtime.py: master/worker requests and generation (the same in one process:
  `prism_ops.in_process`).
A rank's attention layers run `prism_ops.strategy.rank.RankPartition`, which is handed the
Communicator. Imports go down only: this package uses `prism_ops.ops`, `config`, `wire`,
`strategy` and the Hugging Face adapter `prism_ops.hf` (the one place that knows model families),
and never imports transformers itself. mpi4py is imported only when a Communicator is made, so
`import prism_ops` needs no MPI.
"""

from .comm import Communicator
from .faults import CollectiveError, HandshakeError, RemoteFailure, guarded
from .handshake import fingerprint, handshake
from .link import EmulatedLink
from .runtime import Request, RequestError, Result, run_distributed

__all__ = ["CollectiveError", "Communicator", "EmulatedLink", "fingerprint", "guarded", "handshake", "HandshakeError",
           "RemoteFailure", "Request", "RequestError", "Result", "run_distributed"]
