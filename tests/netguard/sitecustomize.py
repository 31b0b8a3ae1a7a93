"""Loaded by every Python process the tests start (this folder is put on PYTHONPATH by conftest.py):
refuses connections and name look-ups to non-local hosts and logs each attempt to $DISTILL_NET_LOG."""

import os
import socket

LOCAL = ("127.", "::1", "localhost", "0.0.0.0")
SAVED: dict = {}


def _log(what: str) -> None:
    path = os.environ.get("DISTILL_NET_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {what}\n")


def _local(host) -> bool:
    if isinstance(host, (bytes, bytearray)):
        host = host.decode(errors="replace")
    return host is None or host == "" or str(host).startswith(LOCAL)  # "": the local host, as in bind


def install() -> None:
    """Refuse (and log) connections, datagrams and name look-ups that leave the machine."""
    if SAVED:
        return
    sock = socket.socket
    SAVED.update(connect=sock.connect, connect_ex=sock.connect_ex, sendto=sock.sendto,
                 getaddrinfo=socket.getaddrinfo, gethostbyname=socket.gethostbyname,
                 gethostbyname_ex=socket.gethostbyname_ex)

    def remote(s, address) -> bool:
        return s.family != getattr(socket, "AF_UNIX", None) and isinstance(address, tuple) and not _local(address[0])

    def connect(s, address):
        if remote(s, address):
            _log(f"connect {address}")
            raise OSError("network disabled in tests")
        return SAVED["connect"](s, address)

    def connect_ex(s, address):
        if remote(s, address):
            _log(f"connect {address}")
            return 111  # ECONNREFUSED
        return SAVED["connect_ex"](s, address)

    def sendto(s, data, *args):
        address = args[-1]
        if remote(s, address):
            _log(f"sendto {address}")
            raise OSError("network disabled in tests")
        return SAVED["sendto"](s, data, *args)

    def lookup(name):
        def guarded(host, *args, **kwargs):
            if not _local(host):
                _log(f"resolve {host}")
                raise socket.gaierror("network disabled in tests")
            return SAVED[name](host, *args, **kwargs)
        return guarded

    sock.connect, sock.connect_ex, sock.sendto = connect, connect_ex, sendto
    socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = (
        lookup("getaddrinfo"), lookup("gethostbyname"), lookup("gethostbyname_ex"))


def uninstall() -> None:
    if not SAVED:
        return
    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = (
        SAVED["connect"], SAVED["connect_ex"], SAVED["sendto"])
    socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = (
        SAVED["getaddrinfo"], SAVED["gethostbyname"], SAVED["gethostbyname_ex"])
    SAVED.clear()


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
