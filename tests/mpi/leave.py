"""Run under mpiexec by tests/distributed/test_distributed.py: the last rank stops itself
(SIGSTOP) while the others are done and leave (`faults.leave_together`).

    mpiexec -n 3 python tests/mpi/leave.py

The job must end non-zero within the 3 s timeout and a few seconds, never hang in MPI_Finalize.
"""

import os
import signal
import time

from prism_ops.distributed.comm import Communicator
from prism_ops.distributed.faults import leave_together

comm = Communicator(timeout_s=3)
if comm.rank == comm.size - 1:
    print(f"rank {comm.rank} stopping, pid {os.getpid()}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(0.5)
leave_together(comm)
print(f"rank {comm.rank} left", flush=True)
