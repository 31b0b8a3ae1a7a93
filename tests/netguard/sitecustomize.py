"""Loaded by every Python process the tests start (this folder is put on PYTHONPATH by conftest.py):
refuses connections and name look-ups to non-local hosts and logs each attempt to $DISTILL_NET_LOG."""

import os
import socket

LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _log(what: str) -> None:
    path = os.environ.get("DISTILL_NET_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {what}\n")


def install() -> None:
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    if getattr(real_connect, "_distill_guard", False):
        return

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family != getattr(socket, "AF_UNIX", None) and not str(host).startswith(LOCAL):
            _log(f"connect {address}")
            raise OSError("network disabled in tests")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not str(host).startswith(LOCAL):
            _log(f"resolve {host}")
            raise socket.gaierror("network disabled in tests")
        return real_getaddrinfo(host, *args, **kwargs)

    connect._distill_guard = True
    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo


if os.environ.get("DISTILL_NET_LOG"):
    install()


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the interpreter has one."""
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.machinery.PathFinder.find_spec(
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if __name__ == "sitecustomize":
    _chain()
