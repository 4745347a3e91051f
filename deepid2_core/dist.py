"""Data-parallel training: one DeepID2 run across many processes (MPI ranks).

Launch: ``mpiexec -n N deepid2 train ...`` (see README, "Train on many
processes"). Without an MPI launcher in the environment (and without
``--dist``) `deepid2 train` never imports this module's MPI half: mpi4py is
imported only by `make_comm` when a launcher started the process.

The math (why N ranks give the single-process result)
----------------------------------------------------
The global batch of step s of epoch e is drawn exactly as in one process
(`np.random.default_rng([seed, e, s])`, `PairSampler.batch`): P pairs, images
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
("virtual ranks"), so:

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
NCCL unique id broadcast over MPI. **This path has never run on a GPU.**
"""

import os
import signal
import socket
import sys
import time
from collections import namedtuple

import numpy as np

from .data import assemble_batch
from .loop import sgd_step
from .train import Trainer, initial_verif_params, lr_at, weigh_ident

# environment variables an MPI launcher sets in the processes it starts
# (MPICH/Hydra, Open MPI, PMIx-based launchers such as srun --mpi=pmix)
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
FAULT_ENV = "DEEPID2_DIST_FAULT"  # test hook: "RANK:EPOCH:STEP:kill|raise" (epoch from 1)

StepLoss = namedtuple("StepLoss", "total ident verif correct")


def launched_by_mpi(env=None):
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCHER_ENV)


# -- communicators ------------------------------------------------------------
class SerialComm:
    """One process, no MPI: the "virtual ranks" of --micro-batches."""
    rank, size, local_rank, kind = 0, 1, 0, "none"

    def bcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def Allgather(self, send, recv):
        recv[...] = send.reshape(recv.shape)

    def Allreduce_sum(self, buf):
        pass

    def barrier(self):
        pass

    def abort(self, code):
        raise SystemExit(code)


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


def make_comm(force=False):
    """MPIComm under an MPI launcher (or when forced), else SerialComm."""
    if force or launched_by_mpi():
        try:
            return MPIComm()
        except ImportError as e:
            raise ValueError(f"distributed training needs mpi4py (pip install '.[dist]'): "
                             f"{e}") from None
    return SerialComm()


# -- gradient reduction -------------------------------------------------------
class HostReducer:
    """cpu backend: the flat gradient buffers are numpy; MPI moves them."""

    def __init__(self, comm, groups, n, deterministic):
        self.comm, self.groups, self.n, self.det = comm, groups, n, deterministic
        self.mine = groups // comm.size
        self.out = np.empty(n, np.float32)
        self.gathered = np.empty((groups, n), np.float32) if deterministic and groups > 1 else None
        self.seconds, self.calls, self.bytes_sent = 0.0, 0, 0

    def reduce(self, local):
        """local: (G/R, n) micro-batch gradients of this rank -> mean over all G."""
        out, R = self.out, self.comm.size
        t0 = time.perf_counter()
        if self.gathered is not None:  # fixed order: all of them, then g = 0, 1, ...
            self.comm.Allgather(local, self.gathered)
            src = self.gathered
            self.bytes_sent += local.nbytes * (R - 1)  # ring all-gather: each chunk R-1 times
        else:
            src = local
        out[...] = src[0]
        for g in range(1, len(src)):
            out += src[g]
        if self.gathered is None and R > 1:
            self.comm.Allreduce_sum(out)
            self.bytes_sent += int(2 * (R - 1) / R * out.nbytes)  # ring all-reduce model
        if self.groups > 1:
            out *= np.float32(1.0 / self.groups)
        if R > 1:
            self.seconds += time.perf_counter() - t0
            self.calls += 1
        return out


class NcclReducer:
    """gpu backend: the flat buffers live on the device; NCCL moves them, the
    NCCL unique id travels over MPI. One process per GPU. NEVER RUN ON A GPU."""

    def __init__(self, comm, groups, n, deterministic):
        import cupy
        from cupy.cuda import nccl
        self.cp, self.nccl_mod = cupy, nccl
        self.comm, self.groups, self.n, self.det = comm, groups, n, deterministic
        self.out = cupy.empty(n, np.float32)
        self.gathered = (cupy.empty((groups, n), np.float32) if deterministic and groups > 1
                         else None)
        uid = comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None)
        self.nccl = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.seconds, self.calls, self.bytes_sent = 0.0, 0, 0

    def reduce(self, local):
        cp, nccl, R = self.cp, self.nccl_mod, self.comm.size
        out = self.out
        stream = cp.cuda.get_current_stream()
        stream.synchronize()
        t0 = time.perf_counter()
        if self.gathered is not None:
            self.nccl.allGather(local.data.ptr, self.gathered.data.ptr, local.size,
                                nccl.NCCL_FLOAT32, stream.ptr)
            src = self.gathered
            self.bytes_sent += local.nbytes * (R - 1)
        else:
            src = local
        out[...] = src[0]
        for g in range(1, len(src)):
            out += src[g]
        if self.gathered is None:
            self.nccl.allReduce(out.data.ptr, out.data.ptr, out.size, nccl.NCCL_FLOAT32,
                                nccl.NCCL_SUM, stream.ptr)
            self.bytes_sent += int(2 * (R - 1) / R * out.nbytes)
        if self.groups > 1:
            out *= np.float32(1.0 / self.groups)
        stream.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


# -- the batch split ----------------------------------------------------------
def micro_batch(images, flips, pair_y, groups, g):
    """Micro-batch g of G of a pair batch [a_0..a_{P-1}, b_0..b_{P-1}]: the
    images of pairs [g P/G, (g+1) P/G) as (images, flips, pair_a, pair_b,
    pair_y), laid out [a.., b..]. Every pair stays whole; the G micro-batches
    together hold every image of the batch exactly once."""
    p = len(pair_y)
    if len(images) != 2 * p or p % groups:
        raise ValueError(f"a batch of {len(images)} images ({p} pairs) cannot be cut into "
                         f"{groups} equal micro-batches of whole pairs")
    q = p // groups
    rows = np.concatenate([np.arange(g * q, (g + 1) * q), p + np.arange(g * q, (g + 1) * q)])
    return (images[rows], flips[rows], np.arange(q, dtype=np.int32),
            np.arange(q, 2 * q, dtype=np.int32), pair_y[g * q:(g + 1) * q])


class DistTrainer(Trainer):
    """Trainer whose steps run on R ranks x G/R micro-batches each (see the
    module's docstring). With a SerialComm and G = 1 it computes exactly what
    Trainer does."""

    def __init__(self, cache, run_dir, train_cfg, backend, comm=None, micro_batches=None,
                 deterministic=False, net_cfg=None, log=print, progress=True):
        self.comm = comm or SerialComm()
        R, rank = self.comm.size, self.comm.rank
        G = micro_batches or R
        if G < 1 or G % R:
            raise ValueError(f"--micro-batches {G} must be a multiple of the number of ranks "
                             f"({R})")
        if train_cfg.batch % (2 * G):
            raise ValueError(f"batch {train_cfg.batch} must be a multiple of 2 x micro-batches "
                             f"= {2 * G}: every micro-batch holds the same number of whole pairs")
        super().__init__(cache, run_dir, train_cfg, backend, net_cfg,
                         log=log if rank == 0 else (lambda *a: None),
                         progress=progress and rank == 0)
        self.groups, self.deterministic = G, deterministic
        self.mine = range(rank * (G // R), (rank + 1) * (G // R))
        from .nets.deepid2 import param_shapes
        self.layout, off = [], 0
        for name, shape in sorted(param_shapes(self.net_cfg).items()):
            size = int(np.prod(shape))
            self.layout.append((name, shape, off, size))
            off += size
        self.n_param = off
        self.n_flat = off + len(initial_verif_params(train_cfg))
        self.local = self.xp.zeros((G // R, self.n_flat), np.float32)
        if self.on_device:  # NCCL under MPI, even at 1 rank (the one-GPU proof of the path)
            reducer = NcclReducer if self.comm.kind == "mpi" else DeviceSerialReducer
        else:
            reducer = HostReducer
        self.reducer = reducer(self.comm, G, self.n_flat, deterministic)
        self.mb_shape = (train_cfg.batch // G, self.net_cfg.channels, self.net_cfg.height,
                         self.net_cfg.width)
        self.mb_x = self.xp.empty(self.mb_shape, np.float32)
        self.fault = _parse_fault(os.environ.get(FAULT_ENV))

    def views(self, flat):
        return {name: flat[off:off + size].reshape(shape) for name, shape, off, size in self.layout}

    # -- one step ------------------------------------------------------------
    def step(self, state, epoch, step, xbuf):
        cfg, be, p, xp = self.cfg, self.be, state["params"], self.xp
        self._maybe_fail(epoch, step)
        rng = np.random.default_rng([cfg.seed, epoch, step])
        images, _, _, py = self.sampler.batch(rng, cfg.batch, cfg.same_share)
        flips = rng.random(len(images)) < 0.5 if cfg.flip else np.zeros(len(images), bool)
        gstep = step + epoch * self.steps_per_epoch
        lam = 0.0 if gstep < cfg.warmup_steps else cfg.lam
        stats = np.zeros((len(self.mine), 4))
        for j, g in enumerate(self.mine):
            idx, fl, pa, pb, gy = micro_batch(images, flips, py, self.groups, g)
            if getattr(self, "flipped", None) is not None:  # a layout patch (Trainer)
                x = self._assemble_pairs(idx, fl, self.mb_x)
                labels = np.asarray(self.cache.labels)[idx].astype(np.int32)
                if self.on_device:
                    labels, pa, pb, gy = (xp.asarray(v) for v in (labels, pa, pb, gy))
            elif self.on_device:
                x = be.assemble_batch(self.dev_patches, idx, fl, out=self.mb_x)
                labels = self.dev_labels[xp.asarray(idx)]
                pa, pb, gy = xp.asarray(pa), xp.asarray(pb), xp.asarray(gy)
            else:
                x = assemble_batch(self.cache.patches, idx, fl, out=self.mb_x)
                labels = np.asarray(self.cache.labels)[idx].astype(np.int32)
            acts = self.net.forward(p, x)
            loss = be.joint_loss(acts["logits"], labels, acts["deepid"], pa, pb, gy,
                                 variant=cfg.verif, lam=lam, params=state["verif"])
            loss = weigh_ident(loss, cfg.ident_weight)
            buf = self.local[j]
            buf.fill(0)
            self.net.backward(p, acts, loss.dlogits, loss.dfeatures, self.views(buf))
            buf[self.n_param:] = loss.dparams
            stats[j] = (loss.total, loss.ident, loss.verif, loss.correct)
        flat = self.reducer.reduce(self.local)
        every = np.concatenate(self.comm.allgather(stats))  # (G, 4), micro-batch order
        sums = np.zeros(4)
        for row in every:  # fixed order, as one process adds them
            sums += row
        G = self.groups
        reduced = StepLoss(sums[0] / G, sums[1] / G, sums[2] / G, int(sums[3]))
        lr = lr_at(cfg, gstep, self.total_steps)
        sgd_step(be, p, self.views(flat), state["velocity"], lr, cfg.momentum, cfg.weight_decay)
        dparams = flat[self.n_param:]
        if cfg.verif == "cosine":
            state["verif"] -= np.float32(lr) * dparams
        elif cfg.learn_margin:
            m = state["verif"][:1] - np.float32(lr) * dparams[:1]
            state["verif"][:1] = xp.maximum(m, np.float32(cfg.margin_min))
        return reduced, len(images)

    def validate(self, params, batch=256):
        """Validation accuracy over all ranks: each counts its share of the
        held-out images, the counts are summed (integers: exact)."""
        if len(self.val_idx) == 0:
            return None
        mine = np.array_split(self.val_idx, self.comm.size)[self.comm.rank]
        correct = self.count_correct(params, mine, batch)
        return sum(self.comm.allgather(correct)) / len(self.val_idx)

    # -- rank 0 alone reads and writes the run folder --------------------------
    def initial_state(self, resume):
        state = super().initial_state(resume) if self.comm.rank == 0 else None
        return self.comm.bcast(state)

    def save_checkpoint(self, state):
        if self.comm.rank == 0:
            super().save_checkpoint(state)

    def save_model(self, state, path):
        if self.comm.rank == 0:
            super().save_model(state, path)

    def _write_log(self, history):
        if self.comm.rank == 0:
            super()._write_log(history)

    def _plot(self, history):
        if self.comm.rank == 0:
            super()._plot(history)

    def _maybe_fail(self, epoch, step):
        f = self.fault
        if f and f[0] == self.comm.rank and f[1] == epoch + 1 and f[2] == step:
            if f[3] == "kill":
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault ({FAULT_ENV}) at epoch {epoch + 1} step {step}")


class DeviceSerialReducer(HostReducer):
    """gpu backend, one rank: the same fixed-order sum, on the device."""

    def __init__(self, comm, groups, n, deterministic):
        import cupy
        self.comm, self.groups, self.n, self.det = comm, groups, n, deterministic
        self.out = cupy.empty(n, np.float32)
        self.gathered = None
        self.seconds, self.calls, self.bytes_sent = 0.0, 0, 0


def _parse_fault(text):
    if not text:
        return None
    r, e, s, what = text.split(":")
    return int(r), int(e), int(s), what


# -- `deepid2 train` under MPI -----------------------------------------------------
def _use_device(comm, name):
    """One process per GPU: the local rank picks the device, before the
    backend touches any."""
    if name != "gpu":
        return
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - get_backend says why in one line
        return
    if count:
        cupy.cuda.Device(comm.local_rank % count).use()


def train_main(args, make_config):
    """`deepid2 train` on this rank; every failure stops all ranks, named."""
    comm = make_comm(force=args.dist)
    if comm.size > 1:  # a rank can be killed any time: let every line reach the launcher
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
    try:
        return _train(comm, args, make_config)
    except BaseException as e:  # noqa: BLE001 - any failure must stop every rank
        if comm.size == 1:
            raise
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        print(f"deepid2 train: rank {comm.rank} of {comm.size} failed: {what}; stopping all "
              f"ranks (the last checkpoint in {args.out} is whole: continue with --resume)",
              file=sys.stderr, flush=True)
        comm.abort(130 if isinstance(e, KeyboardInterrupt) else 1)
    finally:
        if comm.rank != 0:  # one "done in" line (cli.main's), from rank 0
            sys.stdout = open(os.devnull, "w")


def _train(comm, args, make_config):
    from .backends import get_backend
    from .data import PatchSpec, build_cache
    rank0 = comm.rank == 0
    say = print if rank0 else (lambda *a, **k: None)
    _use_device(comm, args.backend)
    be = get_backend(args.backend)
    exists = comm.bcast(os.path.exists(os.path.join(args.out, "checkpoint.safetensors"))
                        if rank0 else None)
    if not args.resume and exists:
        raise ValueError(f"{args.out} already holds a training run: pass --resume to continue "
                         f"it, or choose another --out")
    cfg = make_config(args)
    cache_dir = args.cache or os.path.join(args.out, "cache")
    # rank 0 builds the cache; then one rank per host (no shared disk); then the rest reuse it
    cache = None
    for phase in (comm.rank == 0, comm.rank != 0 and comm.local_rank == 0, comm.local_rank != 0):
        if phase:
            cache = build_cache(args.data, cache_dir, PatchSpec(), progress=rank0)
        comm.barrier()
    table = comm.allgather((comm.rank, os.getpid(), socket.gethostname()))
    threads = be.max_threads() if hasattr(be, "max_threads") else None
    G = args.micro_batches or comm.size
    say(f"{len(cache.labels)} images of {len(cache.identities)} identities "
        f"({len(cache.skipped)} skipped); backend {be.name}"
        + (f", {threads} threads" if threads else "") + " per rank")
    say(f"data-parallel: {comm.size} rank(s) ({comm.kind}), {G} micro-batch(es) of "
        f"{cfg.batch // G if G else cfg.batch} images, "
        + ("deterministic (all-gather, fixed order)" if args.deterministic else
           "fast (all-reduce)") + "; ranks: "
        + ", ".join(f"{r}=pid {pid}@{host}" for r, pid, host in table), flush=True)
    trainer = DistTrainer(cache, args.out, cfg, be, comm, micro_batches=args.micro_batches,
                          deterministic=args.deterministic, progress=rank0)
    try:
        state = trainer.run(resume=args.resume)
    except KeyboardInterrupt:
        if comm.size > 1:
            raise
        print(f"\ninterrupted: the last checkpoint in {args.out} is whole; "
              f"continue with --resume", file=sys.stderr)
        return 130
    red = trainer.reducer
    if red.calls:
        say(f"gradient reduction: {red.seconds / red.calls * 1e3:.2f} ms per step, "
            f"{red.bytes_sent / red.calls / 1e6:.2f} MB sent per rank per step "
            f"({trainer.n_flat * 4 / 1e6:.2f} MB gradient)")
    say(f"best epoch {state['best_epoch']} (validation accuracy {state['best_val']:.4f}); "
        f"model {os.path.join(args.out, 'best.safetensors')}, "
        f"log {os.path.join(args.out, 'log.jsonl')}, plot {os.path.join(args.out, 'curves.png')}")
    return 0
