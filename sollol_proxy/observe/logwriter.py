"""Log lines written off the event loop, in batches.

A log call on the event loop only appends the record to a buffer. A writer thread formats what
has accumulated and writes it with one `write()` `FLUSH_S` after the first line of a batch came,
or sooner once `BATCH` lines wait, so that a slow stderr (a full pipe, a slow terminal, a logging
daemon under load) never holds up a request, and a busy proxy makes one system call per batch
instead of one per line. With nothing to write the thread sleeps until a line comes: a quiet
proxy (at `log_level: warning`, say) wakes no thread ten times a second, and a streaming one
does not hand the interpreter's lock to it.
`flush()` and `close()` write what is left; `logging.shutdown()` calls them at exit, after the
proxy has stopped, so a SIGTERM loses no line (a SIGKILL loses at most the last `FLUSH_S`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TextIO

FLUSH_S = 0.1
BATCH = 512  # lines waiting that wake the writer before its next tick
JOIN_S = 2.0  # how long closing waits for the writer thread


class BatchingHandler(logging.Handler):
    def __init__(self, stream: TextIO, interval: float = FLUSH_S) -> None:
        super().__init__()
        self.stream = stream
        self._interval = interval
        self._pending: deque[logging.LogRecord] = deque()  # append and popleft are thread-safe
        self._wake = threading.Event()  # a batch has begun (its first line came), or closing
        self._full = threading.Event()  # BATCH lines wait, or closing: write them now
        self._writing = threading.Lock()  # one batch at a time: lines keep their order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sollol-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if record.args:
            # Merged now: the arguments are the caller's objects and may change after the call.
            record.msg, record.args = record.getMessage(), None
        pending = self._pending
        pending.append(record)
        # Only the first line of a batch wakes the writer (after a write the buffer is empty
        # again), and the BATCH-th hurries it: one Event.set per batch, not per line.
        waiting = len(pending)
        if waiting == 1:
            self._wake.set()
        elif waiting >= BATCH:
            self._full.set()

    def flush(self) -> None:
        self._write()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._full.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)
        self._write()
        super().close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()  # no timeout: nothing is pending until a line sets it
            self._wake.clear()
            self._full.wait(self._interval)  # the lines that come meanwhile: the same write
            self._full.clear()
            # Every line appended before this pass's last look at the buffer is written by it;
            # one appended after finds the buffer empty and sets `_wake` for the next pass.
            self._write()

    def _write(self) -> None:
        with self._writing:
            pending = self._pending
            if not pending:
                return
            lines: list[str] = []
            record = pending[0]
            while pending:
                record = pending.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if not lines:
                return
            lines.append("")  # the last line ends with a newline too
            try:
                self.stream.write("\n".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(record)
