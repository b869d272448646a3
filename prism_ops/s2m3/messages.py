"""s2m3-serve's wire format: one message = a JSON header and a tensor (its tags: `prism_ops.tags`).

    8 bytes little-endian header length | JSON header (+ dtype, shape) | the tensor's raw bytes

Pure helpers over bytes; the transport (`prism_ops.distributed.comm.Communicator`) knows nothing of
what it carries.
"""

from __future__ import annotations

import json

import torch


def request_key(request_id) -> str:
    """The one hashable key of an S2M3 request id (any JSON value: a number, a string, a list)."""
    return json.dumps(request_id)


def work_header(seq, req, model, node, src) -> dict:
    """The header of a TAG_WORK message: a node's input for request `req` (queue order `seq`)
    from `src` (a node, "input", or "member": a spread encoder's input from its group's lead)."""
    return {"seq": seq, "req": req, "model": model, "node": node, "src": src}


def pack(header: dict, tensor: torch.Tensor) -> bytes:
    """One message: the header (plus the tensor's dtype and shape) and the tensor's bytes."""
    t = tensor.detach().contiguous().cpu()
    head = json.dumps({**header, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}).encode()
    return len(head).to_bytes(8, "little") + head + t.view(torch.uint8).numpy().tobytes()


def unpack(data: bytes) -> tuple[dict, torch.Tensor]:
    """(header, tensor) of a message written by `pack`."""
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8 : 8 + n])
    t = torch.frombuffer(bytearray(data[8 + n :]), dtype=torch.uint8)
    return head, t.view(getattr(torch, head["dtype"])).view(head["shape"])
