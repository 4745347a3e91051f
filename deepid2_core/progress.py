"""A small progress bar for long work, on stderr, with no dependency.

On a terminal it redraws one line (at most 10 times a second). Elsewhere
(a pipe, a log file, CI) it prints at most one line every `interval` seconds
(5 by default), and the final line when the work is done, so logs stay short.
"""

import sys
import time

PIPE_INTERVAL = 5.0  # seconds between two lines off a terminal


class Progress:
    """final_line: off a terminal, print the line of the finished work (False
    where the caller prints its own summary right after, e.g. the epoch line)."""

    def __init__(self, total, desc="", stream=None, enabled=True, interval=PIPE_INTERVAL,
                 final_line=True, clock=time.perf_counter):
        self.total, self.desc, self.n = max(int(total), 1), desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval, self.final_line, self.clock = interval, final_line, clock
        self.t0 = self._last = clock()
        self._finished = False
        self.info = ""

    def update(self, n=1, info=None):
        self.n += n
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        now = self.clock()
        done = self.n >= self.total
        if self.tty:
            if now - self._last >= 0.1 or done:
                self._last = now
                self.stream.write("\r" + self._line(now) + "\033[K")
                self.stream.flush()
        elif done:
            self._finish(now)
        elif now - self._last >= self.interval:
            self._last = now
            self._write(self._line(now))

    def _write(self, line):
        self.stream.write(line + "\n")
        self.stream.flush()

    def _finish(self, now):
        if not self._finished:
            self._finished = True
            if self.final_line:
                self._write(self._line(now))

    def _line(self, now):
        frac = min(1.0, self.n / self.total)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        return (f"{self.desc} [{bar}] {self.n}/{self.total} {el:5.1f}s<{eta:5.1f}s"
                + (f"  {self.info}" if self.info else ""))

    def close(self):
        """End the bar: on a terminal, keep its line; elsewhere print the last
        state once if the work stopped short of its total."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._finish(self.clock())


def note(*parts):
    """A diagnostic line (progress, a resumed run, an epoch's figures): stderr,
    so that a command's stdout holds only its results."""
    print(*parts, file=sys.stderr, flush=True)
