"""Start-up failures in one line, with the advice that fits the problem."""

from __future__ import annotations

import errno
import socket

from sollol_proxy.lifecycle.startup import cannot_listen

FIX = "choose another with --port"


def test_each_bind_failure_gets_its_own_advice() -> None:
    cases = [
        (
            OSError(errno.EADDRINUSE, "address in use"),
            "address already in use (is Ollama or another sollol-proxy running there?); " + FIX,
        ),
        (
            OSError(errno.EACCES, "permission denied"),
            "permission denied (ports below 1024 need privileges); " + FIX,
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "cannot assign"),
            "that address is not one of this machine's; check --host",
        ),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve 'h'; check --host"),
        (OSError(errno.EINVAL, "invalid argument"), f"invalid argument; check --host, or {FIX}"),
    ]
    for exc, said in cases:
        assert str(cannot_listen("h", 80, exc, FIX)) == f"cannot listen on h:80: {said}"
