"""The lock a training run holds on its --out folder: OUT/.lock.

The file holds the owner's pid, host and start time, and is created
atomically (a whole file hard-linked into place, so no reader ever sees it
half-written; os.open O_CREAT|O_EXCL where the file system has no hard links).
A second run into the same folder is refused. A lock whose process is gone
(same host, pid not alive) is stale: it is taken over, with a note. The lock
is removed when the run ends, whether it finished, failed or was interrupted.
"""

import datetime
import json
import os
import socket

from ..progress import note as progress_note

LOCK_NAME = ".lock"


class RunLocked(ValueError):
    """Another training run holds the folder."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    """with RunLock(out): ...  holds OUT/.lock for the block (creates OUT)."""

    def __init__(self, out, note=None):
        self.dir = os.fspath(out)
        self.path = os.path.join(self.dir, LOCK_NAME)
        self.note = note or progress_note
        self.held = False
        self.owner = dict(pid=os.getpid(), host=socket.gethostname(),
                          since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self):
        os.makedirs(self.dir, exist_ok=True)
        for _ in range(3):  # create; a stale lock is taken over, then create again
            if self._create():
                self.held = True
                return
            other = self._read()
            if other is None:  # gone between our create and our read
                continue
            if other.get("host") == self.owner["host"] and isinstance(other.get("pid"), int) \
                    and other["pid"] > 0 and not _pid_alive(other["pid"]):
                self._take_over(other)
                continue
            raise RunLocked(self._in_use(other))
        raise RunLocked(f"{self.dir} is in use by another training run (its lock {self.path} "
                        f"keeps changing)")

    def release(self):
        if not self.held:
            return
        self.held = False
        if self._read() == self.owner:  # never remove a lock another run took over
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    # -- the file ----------------------------------------------------------------
    def _create(self):
        """Put our lock file in place atomically; False if one is there."""
        text = json.dumps(self.owner) + "\n"
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: an exclusive create
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            os.remove(tmp)

    def _read(self):
        return self._read_file(self.path)

    def _take_over(self, other):
        # rename first: of two runs taking over at once only one moves the stale file
        stale = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return
        if self._read_file(stale) != other:  # a live run's lock replaced it meanwhile
            try:
                os.link(stale, self.path)
            except FileExistsError:
                pass
            os.remove(stale)
            return
        os.remove(stale)
        self.note(f"note: taking over the stale lock {self.path} of a run that is gone "
                  f"(pid {other['pid']} on host {other['host']}, since "
                  f"{other.get('since', '?')})")

    @staticmethod
    def _read_file(path):
        """A lock file's owner dict; {} if unreadable; None if there is none."""
        try:
            with open(path) as f:
                owner = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _in_use(self, other):
        if not other:
            return (f"{self.dir} is in use by another training run (its lock {self.path} is "
                    f"unreadable; remove it if no run is using {self.dir})")
        where = f"pid {other.get('pid', '?')} on host {other.get('host', '?')}, since " \
                f"{other.get('since', '?')}"
        hint = "" if other.get("host") == self.owner["host"] else \
            f"; if that run is gone, remove {self.path}"
        return f"{self.dir} is in use by another training run ({where}){hint}"
