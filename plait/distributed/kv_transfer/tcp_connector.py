"""KV over a TCP socket between two processes (one host over loopback, or two hosts).

The decode side listens (`TcpConnector.listen()`, its `address` is handed to the prefill side); the prefill side
connects (`TcpConnector.connect(address)`) and sends each payload as one frame: an 8-byte header length, the
JSON header (key and `KVPayload.header()`), then the layers' raw bytes one layer after another, so neither side
ever builds one buffer of all layers. A reader thread per connection stores arrived payloads in a `Mailbox`
(connector.py), where `receive` takes them and `drop` discards them, also on a late arrival.

A sender side only sends (receive raises) and holds nothing after `send` returns; a listener side only receives.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

import numpy as np

from plait.distributed.kv_transfer.connector import Mailbox
from plait.distributed.kv_transfer.payload import KVPayload

_LEN = struct.Struct("!Q")


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view`; False when the peer closed first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


class TcpConnector:
    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self._box = Mailbox()
        self._server: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._send_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------------------------ set-up
    @staticmethod
    def listen(host: str = "127.0.0.1", port: int = 0) -> "TcpConnector":
        """The receiving side, on `host:port` (port 0: a free one; see `address`)."""
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
        conn = TcpConnector()
        server = socket.create_server((host, port))
        conn._server = server
        conn._address = server.getsockname()[:2]
        threading.Thread(target=conn._accept, name="plait-kv-accept", daemon=True).start()
        return conn

    @staticmethod
    def connect(address: tuple[str, int] | list) -> "TcpConnector":
        """The sending side, connected to a listener's `address`."""
        conn = TcpConnector()
        conn._address = (str(address[0]), int(address[1]))
        conn._sock = socket.create_connection(conn._address)
        conn._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def close(self) -> None:
        self._closed = True
        for sock in (self._server, self._sock):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    # ------------------------------------------------------------------------------------ contract
    def send(self, key: str, payload: KVPayload) -> None:
        if self._sock is None:
            raise RuntimeError("this TcpConnector listens; only a connect()ed one sends")
        header = json.dumps(dict(payload.header(), key=key)).encode()
        with self._send_lock:  # one frame at a time on the shared connection
            self._sock.sendall(_LEN.pack(len(header)) + header)
            for layer in payload.layers:  # layer by layer: no buffer of all layers is ever built
                self._sock.sendall(memoryview(np.ascontiguousarray(layer)).cast("B"))
        self.bytes_sent += payload.nbytes

    def receive(self, key: str, timeout: float) -> KVPayload:
        if self._server is None:
            raise RuntimeError("this TcpConnector sends; only a listen()ing one receives")
        payload = self._box.take(key, timeout)
        self.bytes_received += payload.nbytes
        return payload

    def drop(self, key: str) -> None:
        self._box.drop(key)

    def pending(self) -> int:
        return len(self._box)

    # ------------------------------------------------------------------------------------ listener threads
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(sock,), name="plait-kv-read", daemon=True).start()

    def _read(self, sock: socket.socket) -> None:
        with sock:
            while True:
                size = bytearray(_LEN.size)
                if not _recv_exact(sock, memoryview(size)):
                    return
                raw = bytearray(_LEN.unpack(size)[0])
                if not _recv_exact(sock, memoryview(raw)):
                    return
                header: dict[str, Any] = json.loads(raw)
                layers = []
                for nbytes in header["layer_nbytes"]:
                    layer = np.empty(nbytes, dtype=np.uint8)
                    if not _recv_exact(sock, memoryview(layer)):
                        return
                    layers.append(layer)
                self._box.put(header["key"], KVPayload.from_header(header, layers))
