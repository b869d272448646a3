"""Every MPI message tag prism-ops uses, in one table.

A tag tells apart the messages that can be in flight between two ranks of one communicator at
the same time, so each kind of message has its own. tests/test_layers.py checks that no other
module of the package defines a tag of its own.
"""

TAG_WORK = 11  # s2m3-serve: a node's input for the rank that runs it (`prism_ops.s2m3.messages`)
TAG_RESULT = 12  # s2m3-serve: a task's output, for rank 0
TAG_STOP = 13  # s2m3-serve: rank 0 tells a rank to stop serving
TAG_TOKEN = 21  # a generated token [B] int64 from the decoding (last) rank to rank 0; b"" ends the stream
TAG_TOKEN_STOP = 22  # rank 0's one answer to a token stream: b"stop" (enough: stop decoding) or b"done"
TAG_PROBE = 31  # prism-run --profile: a link probe's message and its 1-byte answer (`link_profile`)
# The causal exchange, point to point: layer K's chunks go under TAG_LAYERS + K (one tag per
# layer, so a rank that runs ahead never mixes two layers' chunks). Below TAG_FAULT for any
# model of fewer than 6001 layers.
TAG_LAYERS = 1000
TAG_FAULT = 7001  # a failing rank's report to rank 0: its exit code (1 byte), then its message (`fault_reports`)
TAG_HEARTBEAT = 7002  # liveness heartbeats: the sender's phase, on their own communicator (`liveness`)
RESERVED_TAGS = (TAG_FAULT, TAG_HEARTBEAT)  # never for a caller's own messages (`Communicator.isend` refuses them)
