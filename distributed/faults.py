"""Fault policy: no failure on one rank may leave the others hanging.

A rank that fails sends its message and exit code to rank 0 (`fault_reports`); rank 0, which
polls for such reports in every wait, prints it and aborts the whole job with that code (`abort`,
the one place the package ends a process: MPI requires it of a job that cannot go on).
Errors that every rank hits alike at the same point (a bad request, a settings mismatch) are
`CollectiveError`s: every rank raises them, `guarded` returns the error's exit code on every
rank, and the ranks leave together (`leave_together`) for the command line to exit with it.
Bad input found on one rank only (a model folder missing there, a file only rank 0 reads) is
made collective by `agree` / `agree_rank0`, so no rank waits in an operation that never comes.
A rank that goes silent (stopped, frozen) is named by `SilentRank` (`distributed.liveness`).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from prism_ops.errors import CollectiveError  # noqa: F401  (re-exported: the fault policy's base error)
from .control import allgather_json, bcast_json


class RemoteFailure(RuntimeError):
    """Another rank failed; the message says which and why, exit_code what it would exit with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class SilentRank(TimeoutError):
    """A rank this one waits on has not been heard from for longer than the timeout."""

    def __init__(self, rank: int, silent_s: float, timeout_s: float, its_phase: str, me: int, my_phase: str):
        # Its phase is the one its last heartbeat carried (heartbeats go out within 50 ms of a new
        # phase, so a rank that stopped right after changing phase may show the one before).
        super().__init__(f"rank {rank} has been silent for {silent_s:.1f} s (timeout {timeout_s:g} s); "
                         f"last heard in: {its_phase}; rank {me} was in: {my_phase}")
        self.args = (str(self),)  # TimeoutError is an OSError: keep its errno fields out of the message
        self.rank, self.phase = rank, its_phase


class HandshakeError(CollectiveError):
    """Ranks were started with different settings."""

    exit_code = 3


class BadInput(CollectiveError, ValueError):
    """A bad flag, file, folder, plan or request, found on some rank and raised on every rank
    (exit code 2)."""

    exit_code = 2


def agree(comm, fn, key="control"):
    """fn() on every rank; if it raised ValueError on any, BadInput on every rank (the message of
    the lowest such rank, naming it when it is not rank 0). Returns fn's value."""
    value, err = None, None
    try:
        value = fn()
    except ValueError as e:
        err = str(e)
    errors = allgather_json(comm, err, key=key)
    for r, e in enumerate(errors):
        if e is not None:
            raise BadInput(e if r == 0 else f"rank {r}: {e}")
    return value


def agree_rank0(comm, fn, key="control"):
    """fn() on rank 0 only (what only rank 0 reads: the input, a profile); a ValueError there is
    raised as BadInput on every rank, on rank 0 with that error as its cause (for a traceback).
    Returns fn's value on rank 0, None elsewhere."""
    value, err, cause = None, None, None
    if comm.rank == 0:
        try:
            value = fn()
        except ValueError as e:
            err, cause = str(e), e
    err = bcast_json(comm, err, key=key)
    if err is not None:
        raise BadInput(err) from cause
    return value


def guarded(comm, fn, prog: str = "prism", debug: bool = False) -> int:
    """Run fn() on this rank so that no failure leaves the job hanging; returns the exit code.

    0 when fn returns. A CollectiveError (raised on every rank alike) returns its exit code, rank
    0 printing the message, so every rank can exit with it. A ValueError (a bad setting, file or
    folder), a silent rank or any other exception on any rank aborts the whole job, rank 0
    printing the cause in one line (exit code 2 for ValueError, else 1): that never returns. An
    unexpected exception shows its traceback only with debug=True.
    """
    try:
        fn()
    except CollectiveError as e:
        if comm.rank == 0:
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except RemoteFailure as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        abort(comm, e.exit_code)
    except SilentRank as e:
        if e.rank == 0:  # nobody to tell: say so here and end the job
            print(f"{prog}: rank {comm.rank}/{comm.size}: error: {e}", file=sys.stderr, flush=True)
            abort(comm, 1)
        report_failure(comm, f"error: {e}", 1, prog)
    except ValueError as e:
        report_failure(comm, f"error: {e}", 2, prog)
    except SystemExit as e:
        if e.code not in (0, None):
            report_failure(comm, str(e.code), e.code if isinstance(e.code, int) else 1, prog)
    except BaseException as e:  # noqa: BLE001 - anything else must end the job, never hang it
        if debug:
            text = "".join(traceback.format_exception(e)).rstrip()
        else:
            text = f"{type(e).__name__}: {e} (--debug shows the traceback)"
        report_failure(comm, text, 1, prog)
    return 0


def leave_together(comm) -> None:
    """The job is over on this rank (done, or every rank got the same error, a CollectiveError,
    and is about to exit with its code): wait for all, stop the heartbeats, wait for all again,
    then finalize MPI. So no rank is still running when the first one exits (the launcher kills
    a job's other ranks as soon as one exits non-zero before MPI_Finalize; ranks still shutting
    down, freeing a model can take seconds, would die by its signal, exit 9), and no rank's
    heartbeat travels to one that has finalized (over MPICH's TCP netmod the sender then crashed
    at its own exit, exit 11, when one rank had run a request alone while another was done).
    A rank silent at either wait (`comm.barrier` raises after the timeout) ends the job non-zero
    (`abort`) rather than hang in MPI_Finalize."""
    for stop_heartbeats in (True, False):
        try:
            comm.barrier()
        except (TimeoutError, RemoteFailure) as e:
            # A rank gone meanwhile (its work done, say, before anyone waited for it): MPI_Finalize
            # would wait for it forever, so the job ends as a fault instead, saying why.
            print(f"prism: rank {comm.rank}/{comm.size}: a rank is gone at the job's end, so it ends as a "
                  f"fault: {e}", file=sys.stderr, flush=True)
            abort(comm, 1)
        if stop_heartbeats:
            comm.watch.close()
    sys.stdout.flush()
    sys.stderr.flush()
    comm.finalize()


def report_failure(comm, message: str, exit_code: int = 1, prog: str = "prism") -> None:
    """Called by a failing rank: rank 0 prints the cause and the whole job aborts. Never returns."""
    text = f"rank {comm.rank}/{comm.size}: {message}"
    if comm.rank == 0:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)
    else:
        # Rank 0 polls for this while it waits in any operation and then aborts the job.
        comm.faults.send(text, wait_s=5.0, exit_code=exit_code)
        time.sleep(5.0)
        print(f"{prog}: {text}", file=sys.stderr, flush=True)  # still here: rank 0 did not answer
    abort(comm, exit_code)


def abort(comm, exit_code: int) -> None:
    """End every rank of the job (MPI_Abort) and this process. Never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(1.0)  # let mpiexec forward what this rank printed before it kills the job
    comm.comm.Abort(exit_code)
    # MPICH's MPI_Abort returns to the caller once the launcher is told: never run on (the short
    # wait lets the launcher take this rank's last output first).
    time.sleep(0.5)
    os._exit(exit_code)
