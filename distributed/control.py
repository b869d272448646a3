"""Small JSON control messages over the communicator: request heads, sizes, timings.

    head = bcast_json(comm, head if comm.rank == 0 else None)      # rank 0's object, everywhere
    every = allgather_json(comm, {"forward": 0.12})                # one object per rank

Objects are JSON-encoded to bytes (never pickled) and sent with the communicator's buffer
operations, so their bytes are counted like any other (under `key`).
"""

from __future__ import annotations

import json


def bcast_json(comm, obj=None, key="request"):
    """Rank 0's JSON-able object, on every rank."""
    return json.loads(comm.bcast_bytes(json.dumps(obj).encode() if comm.rank == 0 else None, key))


def allgather_json(comm, obj, key="control") -> list:
    """Every rank's JSON-able object, on every rank, in rank order."""
    return [json.loads(b) for b in comm.allgather_bytes(json.dumps(obj, sort_keys=True).encode(), key)]
