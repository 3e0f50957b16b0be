"""Start-up failures said in one line: what could not be done, where, and what to change.

A port already in use is the usual first-run failure (an Ollama on the same machine holds
11434): the operator needs the port and the option that moves it, not a traceback.
"""

from __future__ import annotations

import errno
import socket

_PROBLEMS = {
    errno.EADDRINUSE: "address already in use (is Ollama or another sollol-proxy running there?)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's",
}


class StartupError(Exception):
    """The process cannot start; the message is one line for the operator."""


def cannot_listen(host: str, port: int, exc: OSError, fix: str) -> StartupError:
    """Binding `host:port` failed with `exc`; `fix` names the setting that changes it."""
    if isinstance(exc, socket.gaierror):
        problem = f"cannot resolve {host!r}"
    else:
        problem = _PROBLEMS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StartupError(f"cannot listen on {host}:{port}: {problem}; {fix}")
