"""MPI layer of prism-ops (installed as `prism_ops.distributed`).

The communicator on mpi4py, the summary all-gathers and the master/worker runtime live here.
It imports mpi4py only when used, so `import prism_ops` needs no MPI.
"""
