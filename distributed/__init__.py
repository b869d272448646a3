"""MPI layer of prism-ops (installed as `prism_ops.distributed`).

    comm = Communicator()                                   # one per rank (mpi4py, COMM_WORLD)
    hf.configure(model, num_partitions=comm.size, segment_size=16, comm=comm)
    comm.handshake(fingerprint(model, settings))            # same model and settings everywhere
    result = run_distributed(model, comm, request)          # the Result on rank 0

- comm.py: the communicator, the one place MPI is called (buffers only, fault reports, an
  emulated link, byte counters).
- payload.py: a rank's per-layer payload as bytes.
- attention.py: PRISM attention on one rank (all-gather overlapped with the local block).
- runtime.py: master/worker requests, generation, and the same in one process.
mpi4py is imported only when a Communicator is made, so `import prism_ops` needs no MPI.
"""

from .comm import CollectiveError, Communicator, HandshakeError, RemoteFailure, guarded
from .runtime import Request, RequestError, Result, run_distributed, run_simulated

__all__ = ["CollectiveError", "Communicator", "guarded", "HandshakeError", "RemoteFailure", "Request", "RequestError", "Result",
           "run_distributed", "run_simulated"]
