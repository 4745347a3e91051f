"""Data parallelism: the hook that runs the one loop (training/loop.py) on many
processes (MPI ranks) and micro-batches, for one DeepID2 run.

Launch: ``mpiexec -n N deepid2 train ...`` (see README, "Train on many
processes"). `deepid2 train` (training/train_deepid2.py) imports this module
only when an MPI launcher started the process (or with ``--dist``); a plain
run is the loop's OneProcess and never meets it, nor mpi4py.

The math (why N ranks give the single-process result)
----------------------------------------------------
The global batch of step s of epoch e is drawn exactly as in one process
(`np.random.default_rng([seed, e, s])`, `PairSampler.batch`) and cut by
`training.deepid2.PairBatch.part`: P pairs, images
[a_0..a_{P-1}, b_0..b_{P-1}], and their flips. It is cut into G *micro-batches*
(``--micro-batches``, default: the number of ranks R; R must divide G and 2G
the batch): micro-batch g holds pairs [g P/G, (g+1) P/G), i.e. the images
a_i and b_i of those pairs, laid out [a.., b..] like a batch of their own.
**Verification pairs stay whole inside one micro-batch**, so inside one rank;
no pair term crosses ranks. Rank r owns micro-batches [r G/R, (r+1) G/R) and
reads only their rows of the (memory-mapped) uint8 patch cache.

Each micro-batch runs the ordinary forward, joint loss and backward on its
own B/G images into a zeroed slice of one flat float32 buffer (every
parameter gradient, then d loss / d verification params). With equal
micro-batches the loss of the batch is the mean of the micro-batch losses
(ident: mean over images; verif: mean over pairs), so the batch gradient is
  grad = (1/G) * sum_g grad_g,
summed in a fixed order g = 0, 1, ..., G-1 and scaled once by float32(1/G).
One process with ``--micro-batches G`` computes exactly this sum itself
(the loop's gradient accumulation, loop.OneProcess), so:

* deterministic mode (``--deterministic``): the ranks all-gather their
  unsummed micro-batch gradients (one flat buffer each, in rank order = micro-
  batch order) and every rank adds them in that order. An R-rank run ends
  with weights (and checkpoints) *byte-identical* to a 1-process run with
  ``--micro-batches G`` of the same global batch, on any thread counts (the
  C++ ops do not depend on the thread count).
* fast mode (default): each rank adds its own micro-batches, then one
  ``MPI.Allreduce`` (cpu, host buffer) or NCCL all-reduce (gpu, device
  buffer) of the flat buffer. With R = 2 and G = 2 this is still
  bit-identical (a + b = b + a in IEEE arithmetic); otherwise the sum order is
  the MPI/NCCL library's and results agree to float32 rounding.
* against a plain 1-process run (G = 1, the whole batch in one call of each
  op) the result is the same mathematically but not bit for bit: the weight
  gradients sum over images inside the GEMMs in another order. Measured on the
  tests' tiny run: weights within 1e-4 (absolute) after 2 epochs; the test
  allows 1e-3.

Losses, accuracies: each micro-batch's (total, ident, verif, correct) are
gathered in micro-batch order and combined the same way (mean, mean, mean,
sum) on every rank, so rank 0 logs what the 1-process run with the same G
logs. Validation: the held-out images are split across ranks and the correct
counts summed (an integer, exact).

Checkpoints: rank 0 alone loads (and broadcasts) and writes them, atomically,
as one process would; they hold the global state only (parameters,
velocities, verification params, epoch), so a run resumes on any number of
ranks (with the same G it continues bit for bit).

Faults: an exception on any rank prints ``deepid2 train: rank R of N failed:
...`` and aborts the whole job (MPI_Abort). A rank killed outright (SIGKILL,
OOM killer) is reported by the launcher by its PID; rank 0 prints the rank ->
PID table at start so that PID names the rank. Checkpoints are written to a
temporary file and renamed, so an interrupted run leaves the last complete
one in place.

GPU (``--backend gpu``): one process per GPU (the local rank picks the
device), gradients all-reduced by NCCL (cupy.cuda.nccl) on the device, the
NCCL unique id broadcast over MPI (backends/gpu_nccl.py). **This path has never
run on more than one GPU.**
"""

import os
import signal
import socket
import sys
import time
from contextlib import contextmanager

import numpy as np

from .lock import RunLock, RunLocked
from .loop import add_in_order

FAULT_ENV = "DEEPID2_DIST_FAULT"  # test hook: "RANK:EPOCH:STEP:kill|raise" (epoch from 1)


class MPIComm:
    """COMM_WORLD through mpi4py (imported here, only when asked for)."""
    kind = "mpi"

    def __init__(self):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, self.rank)
        self.local_rank = node.Get_rank()
        node.Free()

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def Allgather(self, send, recv):
        self.comm.Allgather(send, recv)

    def Allreduce_sum(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(1.0)  # the launcher forwards our last lines before it kills everyone
        self.comm.Abort(code)


def make_comm():
    """MPIComm; a missing mpi4py is named in one line."""
    try:
        return MPIComm()
    except ImportError as e:
        raise ValueError(f"distributed training needs mpi4py (pip install '.[dist]'): "
                         f"{e}") from None


# -- gradient reduction -------------------------------------------------------
class Reducer:
    """The mean of the G micro-batch gradients of every rank, in a fixed order,
    on host buffers (MPI moves them). NcclReducer (backends/gpu_nccl.py) is the
    same for device buffers across GPUs."""

    def __init__(self, comm, groups, deterministic):
        self.comm, self.groups, self.det = comm, groups, deterministic
        self.out = self.gathered = None
        self.seconds, self.calls, self.bytes_sent = 0.0, 0, 0

    def reduce(self, local):
        """local: (G/R, n) micro-batch gradients of this rank -> mean over all G."""
        R = self.comm.size
        if R == 1 and self.groups == 1:
            return local[0]  # one micro-batch: its gradient is the batch's
        if self.out is None:
            self.out = np.empty(local.shape[1], np.float32)
            if self.det and self.groups > 1:
                self.gathered = np.empty((self.groups, local.shape[1]), np.float32)
        t0 = time.perf_counter()
        if self.gathered is not None:  # fixed order: all of them, then g = 0, 1, ...
            self.comm.Allgather(local, self.gathered)
            self.bytes_sent += local.nbytes * (R - 1)  # ring all-gather: each chunk R-1 times
        out = add_in_order(local if self.gathered is None else self.gathered, self.out)
        if self.gathered is None and R > 1:
            self.comm.Allreduce_sum(out)
            self.bytes_sent += int(2 * (R - 1) / R * out.nbytes)  # ring all-reduce model
        if self.groups > 1:
            out *= np.float32(1.0 / self.groups)
        if R > 1:
            self.seconds += time.perf_counter() - t0
            self.calls += 1
        return out


class DataParallel:
    """The loop's parallel hook on the ranks of an MPI job: R ranks x G/R
    micro-batches each (see the module's docstring), and the run-level verbs
    of `deepid2 train` for every rank. backend: "gpu" takes the local rank's
    GPU here, before the backend touches any, and reduces through NCCL."""

    def __init__(self, comm, backend="cpu", deterministic=False):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.gpu, self.deterministic = backend == "gpu", deterministic
        self.reducer = None   # made at the first step, when G is known
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))
        if self.gpu:
            try:
                from ..backends.gpu_nccl import use_local_device
            except ImportError:  # no CuPy: get_backend says why in one line
                return
            use_local_device(comm.local_rank)

    # -- a step
    def reduce(self, local):
        if self.reducer is None:
            G = len(local) * self.size
            if self.gpu:   # NCCL, even at 1 rank (the 1-GPU proof)
                from ..backends.gpu_nccl import NcclReducer
                self.reducer = NcclReducer(self.comm, G, self.deterministic)
            else:
                self.reducer = Reducer(self.comm, G, self.deterministic)
        return self.reducer.reduce(local)

    def gather(self, rows):
        """Every micro-batch's metrics, in micro-batch order."""
        return [row for mine in self.comm.allgather(rows) for row in mine]

    def bcast(self, obj):
        return self.comm.bcast(obj)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def before_step(self, epoch, step):
        f = self.fault
        if f and f[0] == self.rank and f[1] == epoch + 1 and f[2] == step:
            if f[3] == "kill":
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault ({FAULT_ENV}) at epoch {epoch + 1} step {step}")

    # -- the run (training/train_deepid2.py)
    def guard(self, out, train):
        """train() on this rank; every failure stops all ranks, named."""
        if self.size > 1:  # a rank can be killed any time: let every line reach the launcher
            for stream in (sys.stdout, sys.stderr):
                if hasattr(stream, "reconfigure"):  # not on a captured stream
                    stream.reconfigure(line_buffering=True)
        try:
            return train()
        except BaseException as e:  # noqa: BLE001 - any failure must stop every rank
            if self.size == 1:
                raise
            what = ("interrupted" if isinstance(e, KeyboardInterrupt)
                    else f"{type(e).__name__}: {e}")
            print(f"deepid2 train: rank {self.rank} of {self.size} failed: {what}; stopping "
                  f"all ranks (the last checkpoint in {out} is whole: continue with --resume)",
                  file=sys.stderr, flush=True)
            self.comm.abort(130 if isinstance(e, KeyboardInterrupt) else 1)
        finally:
            if self.rank != 0:  # one "done in" line (cli.main's, on stderr), from rank 0
                sys.stdout = sys.stderr = open(os.devnull, "w")

    @contextmanager
    def lock(self, out):
        """Rank 0 takes the lock on out (training/lock.py) and holds it for the
        block; every rank hears whether it got it."""
        lock, refused = None, None
        if self.rank == 0:
            lock = RunLock(out)
            try:
                lock.acquire()
            except RunLocked as e:
                refused = str(e)
        refused = self.comm.bcast(refused)
        if refused:
            raise RunLocked(refused)
        try:
            yield lock
        finally:
            if lock is not None:
                lock.release()

    def exists(self, path):
        """Rank 0 looks, every rank hears."""
        return self.comm.bcast(os.path.exists(path) if self.rank == 0 else None)

    def build_cache(self, build):
        """build(progress): rank 0 builds the cache; then one rank per host (no
        shared disk); then the rest reuse it."""
        comm, cache = self.comm, None
        for phase in (comm.rank == 0, comm.rank != 0 and comm.local_rank == 0,
                      comm.local_rank != 0):
            if phase:
                cache = build(comm.rank == 0)
            comm.barrier()
        return cache

    def report_start(self, batch, groups):
        """The layout, with "0=pid P@host, 1=..." of every rank (a launcher names
        a killed rank by its PID)."""
        table = self.comm.allgather((self.rank, os.getpid(), socket.gethostname()))
        if self.size == 1 and groups == 1:
            return None
        return (f"data-parallel: {self.size} rank(s) ({self.comm.kind}), {groups} "
                f"micro-batch(es) of {batch // groups} images, "
                + ("deterministic (all-gather, fixed order)" if self.deterministic else
                   "fast (all-reduce)")
                + "; ranks: " + ", ".join(f"{r}=pid {pid}@{host}" for r, pid, host in table))

    def report_end(self, grad_bytes):
        red = self.reducer
        if red is None or not red.calls:
            return None
        return (f"gradient reduction: {red.seconds / red.calls * 1e3:.2f} ms per step, "
                f"{red.bytes_sent / red.calls / 1e6:.2f} MB sent per rank per step "
                f"({grad_bytes / 1e6:.2f} MB gradient)")


def _parse_fault(text):
    if not text:
        return None
    r, e, s, what = text.split(":")
    return int(r), int(e), int(s), what
