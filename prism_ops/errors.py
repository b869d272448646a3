"""The error every rank raises alike (so all ranks stop together with one exit code).

Low in the package so that request checks (`prism_ops.request_types`) and the MPI layer's fault
policy (`prism_ops.distributed.faults`, which adds its own subclasses) share it.
"""


class CollectiveError(RuntimeError):
    """Raised the same way on every rank at the same point, so all ranks stop together."""

    exit_code = 1
