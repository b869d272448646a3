"""Fault policy: no failure on one rank may leave the others hanging.

A rank that fails sends its message to rank 0 (`Communicator.send_fault`); rank 0, which polls
for such reports in every wait, prints it and aborts the whole job. Errors that every rank hits
alike at the same point (a bad request, a settings mismatch) are `CollectiveError`s: every rank
raises them and all stop together with the error's exit code.
"""

from __future__ import annotations

import sys
import time
import traceback


class RemoteFailure(RuntimeError):
    """Another rank failed; the message says which and why."""


class CollectiveError(RuntimeError):
    """Raised the same way on every rank at the same point, so all ranks stop together."""

    exit_code = 1


class HandshakeError(CollectiveError):
    """Ranks were started with different settings."""

    exit_code = 3


def guarded(comm, fn, prog: str = "prism") -> int:
    """Run fn() on this rank so that no failure leaves the job hanging; returns the exit code.

    0 when fn returns. A CollectiveError (raised on every rank alike) returns its exit code, rank
    0 printing the message, so every rank can exit with it. A ValueError (a bad setting, file or
    folder) or any other exception on any rank aborts the whole job, rank 0 printing the cause
    (exit code 2 for ValueError, else 1): that never returns.
    """
    try:
        fn()
    except CollectiveError as e:
        if comm.rank == 0:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except RemoteFailure as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        abort(comm, 1)
    except ValueError as e:
        report_failure(comm, f"error: {e}", 2, prog)
    except SystemExit as e:
        if e.code not in (0, None):
            report_failure(comm, str(e.code), e.code if isinstance(e.code, int) else 1, prog)
    except BaseException as e:  # noqa: BLE001 - anything else must end the job, never hang it
        report_failure(comm, "".join(traceback.format_exception(e)).rstrip(), 1, prog)
    return 0


def report_failure(comm, message: str, exit_code: int = 1, prog: str = "prism") -> None:
    """Called by a failing rank: rank 0 prints the cause and the whole job aborts. Never returns."""
    text = f"rank {comm.rank}/{comm.size}: {message}"
    if comm.rank == 0:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)
    else:
        # Rank 0 polls for this while it waits in any operation and then aborts the job.
        comm.send_fault(text, wait_s=5.0)
        time.sleep(5.0)
        print(f"{prog}: {text}", file=sys.stderr, flush=True)  # still here: rank 0 did not answer
    abort(comm, exit_code)


def abort(comm, exit_code: int) -> None:
    """End every rank of the job. Never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)  # let mpiexec forward what this rank printed before it kills the job
    comm.abort(exit_code)
