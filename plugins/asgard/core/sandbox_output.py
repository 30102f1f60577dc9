"""A sandboxed command's output, streamed line by line under a cap (``asgard.core.sandbox``)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable

# Read from the sandbox's output at most this much before a line counts as complete.
MAX_LINE_BYTES = 16_384


class OutputReader(threading.Thread):
    """Streams the sandbox's output line by line (a line longer than MAX_LINE_BYTES in pieces), up to a
    cap on the bytes read, newline or not; keeps a tail for error messages."""

    def __init__(
        self, process: subprocess.Popen, cap: int, output: Callable[[str], None], *, on_overflow: Callable[[], None]
    ) -> None:
        super().__init__(daemon=True)
        self.process, self.cap, self.output, self.on_overflow = process, cap, output, on_overflow
        self.total = 0
        self.overflowed = False
        self.lines: list[str] = []

    def run(self) -> None:
        stream = self.process.stdout
        pending = b""
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            self.total += len(chunk)
            if self.total > self.cap:
                self.overflowed = True
                self.on_overflow()
                chunk = chunk[: max(0, len(chunk) - (self.total - self.cap))]
            pending += chunk
            pending = self._emit(pending)
            if self.overflowed:
                break
        if pending:
            self._line(pending)
        stream.close()

    def _emit(self, pending: bytes) -> bytes:
        while True:
            newline = pending.find(b"\n")
            if newline < 0 and len(pending) < MAX_LINE_BYTES:
                return pending
            cut = newline if 0 <= newline < MAX_LINE_BYTES else MAX_LINE_BYTES
            self._line(pending[:cut])
            pending = pending[cut + 1 :] if cut == newline else pending[cut:]

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        self.output(line)
        self.lines = [*self.lines[-39:], line]

    def note(self, line: str) -> None:
        """A line of the platform's own after the command's output (in the log and the tail)."""
        self._line(line.encode())

    def tail(self) -> list[str]:
        return self.lines[-20:]
