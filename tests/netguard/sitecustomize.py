"""Loaded by the app server in the browser test: refuse and log any non-loopback connection."""

import os
import socket

_LOG = os.environ.get("PNEUMO_NET_LOG")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _allowed(sock: socket.socket, address) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True
    host = str(address[0])
    return host.startswith("127.") or host in ("::1", "localhost")


def _guard(original):
    def connect(self, address):
        if not _allowed(self, address):
            if _LOG:
                with open(_LOG, "a") as log:
                    log.write(f"{address}\n")
            raise OSError(f"outbound connection to {address} blocked by the test")
        return original(self, address)

    return connect


socket.socket.connect = _guard(_connect)
socket.socket.connect_ex = _guard(_connect_ex)
