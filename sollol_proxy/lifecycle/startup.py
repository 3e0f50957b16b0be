"""Start-up failures said in one line: what could not be done, where, and what to change.

A port already in use is the usual first-run failure (an Ollama on the same machine holds
11434): the operator needs the port and the option that moves it, not a traceback.
"""

from __future__ import annotations

import errno
import socket

_PORT_PROBLEMS = {
    errno.EADDRINUSE: "address already in use (is Ollama or another sollol-proxy running there?)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}
HOST_FIX = "check --host"


class StartupError(Exception):
    """The process cannot start; the message is one line for the operator."""


def cannot_listen(host: str, port: int, exc: OSError, port_fix: str) -> StartupError:
    """Binding `host:port` failed with `exc`. The advice is `port_fix` when the port is the
    problem, else to check the host."""
    if isinstance(exc, socket.gaierror):
        problem, fix = f"cannot resolve {host!r}", HOST_FIX
    elif exc.errno in _PORT_PROBLEMS:
        problem, fix = _PORT_PROBLEMS[exc.errno], port_fix
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem, fix = "that address is not one of this machine's", HOST_FIX
    else:
        problem, fix = exc.strerror or str(exc), f"{HOST_FIX}, or {port_fix}"
    return StartupError(f"cannot listen on {host}:{port}: {problem}; {fix}")
