"""The front end's line to rank 0: framed JSON messages over one TCP connection.

    ch = Channel(sock)
    ch.send({"job": {...}})                 # a header, no payload
    ch.send({"vectors": "j1"}, blob)        # a header and raw bytes (float32 embeddings)
    header, blob = ch.recv()                # blocks; EOFError once the other side has closed

A frame is two big-endian uint32 lengths (header, payload), the header as UTF-8 JSON, then the
payload. Embeddings travel as raw float32 bytes instead of JSON numbers: writing 384 floats as
JSON is the per-request cost the front end exists to take off rank 0. `send` may be called from
several threads at once (one lock per channel); `recv` from one.
"""

from __future__ import annotations

import json
import socket
import struct
import threading

_HEAD = struct.Struct("!II")
MAX_FRAME = 64 * 2**20  # a frame longer than this is a broken or foreign peer, not a message


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self._file = sock.makefile("rb")

    def send(self, header: dict, blob: bytes = b"") -> None:
        data = json.dumps(header, separators=(",", ":")).encode()
        with self._send_lock:
            self.sock.sendall(_HEAD.pack(len(data), len(blob)) + data + blob)

    def recv(self) -> tuple[dict, bytes]:
        head = self._read(_HEAD.size)
        n, m = _HEAD.unpack(head)
        if n > MAX_FRAME or m > MAX_FRAME:
            raise EOFError(f"a frame of {n} + {m} bytes: not a prism-ops peer")
        header = json.loads(self._read(n))
        return header, self._read(m) if m else b""

    def _read(self, n: int) -> bytes:
        data = self._file.read(n)
        if len(data) < n:
            raise EOFError("the other side closed the connection")
        return data

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
