"""A small progress bar for long work, on stderr, with no dependency.

On a terminal it redraws one line (at most 10 times a second); elsewhere
(logs, CI) it prints a line at every 10% so logs stay short.
"""

import sys
import time


class Progress:
    def __init__(self, total, desc="", stream=None, enabled=True):
        self.total, self.desc, self.n = max(int(total), 1), desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self._last = time.perf_counter()
        self._last_decile = -1
        self.info = ""

    def update(self, n=1, info=None):
        self.n += n
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last >= 0.1 or self.n >= self.total:
                self._last = now
                self.stream.write("\r" + self._line(now) + "\033[K")
                self.stream.flush()
        else:
            decile = min(10, self.n * 10 // self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def _line(self, now):
        frac = min(1.0, self.n / self.total)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        return (f"{self.desc} [{bar}] {self.n}/{self.total} {el:5.1f}s<{eta:5.1f}s"
                + (f"  {self.info}" if self.info else ""))

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
