"""`deepid2 train`: one DeepID2 run on the one loop (training/loop.py), with the
run around it: the lock on OUT, the refusal to overwrite a finished run, the
patch cache and the report.

One process (OneProcess) unless an MPI launcher started this one, or
--dist asks for MPI anyway: only then is training/dist.py imported (and
mpi4py with it), and its DataParallel holds the same verbs for every rank
(`mpiexec -n N deepid2 train ...`). --micro-batches G is the loop's gradient
accumulation either way: one process computes all G, N ranks G/N each.
"""

import os
import sys

from ..backends import get_backend
from ..data import build_cache
from ..progress import note
from .checkpoint import BEST, CHECKPOINT, LOG, PLOT
from .deepid2 import DeepID2Task
from .loop import Loop, OneProcess

# environment variables an MPI launcher sets in the processes it starts
# (MPICH/Hydra, Open MPI, PMIx-based launchers such as srun --mpi=pmix)
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi(env=None):
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCHER_ENV)


def check_micro_batches(micro_batches, ranks, batch):
    """G, the micro-batches of every batch (None: one per rank), checked
    against the ranks and the batch before any work: whole pairs, the same
    number in each."""
    G = ranks if micro_batches is None else micro_batches
    if G < 1 or G % ranks:
        raise ValueError(f"--micro-batches {G} must be a positive multiple of the number of "
                         f"ranks ({ranks})")
    if G > 1 and batch % (2 * G):
        raise ValueError(f"batch {batch} must be a multiple of 2 x micro-batches = {2 * G}: "
                         f"every micro-batch holds the same number of whole pairs")
    return G


def parallel_hook(force_dist, backend, deterministic):
    """OneProcess, or under an MPI launcher (or force_dist) the ranks' DataParallel."""
    if not (force_dist or launched_by_mpi()):
        return OneProcess()
    from .dist import DataParallel, make_comm
    return DataParallel(make_comm(), backend, deterministic)


def train_deepid2_main(data_dir, out_dir, spec, cfg, backend="cpu", resume=False,
                       cache_dir=None, micro_batches=None, deterministic=False, dist=False,
                       log=note):
    """Train DeepID2 (cfg: deepid2.TrainConfig) on the patches spec of the identity
    folders in data_dir; write out_dir/checkpoint.safetensors, best.safetensors,
    log.jsonl and curves.png. Returns the final host state, or None when
    Ctrl-C stopped a one-process run (its last checkpoint is whole)."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"dataset folder {data_dir!r} does not exist or is not a folder")
    par = parallel_hook(dist, backend, deterministic)
    groups = check_micro_batches(micro_batches, par.size, cfg.batch)
    return par.guard(out_dir, lambda: _train(par, groups, data_dir, out_dir, spec, cfg,
                                             backend, resume, cache_dir, log))


def _train(par, groups, data_dir, out_dir, spec, cfg, backend, resume, cache_dir, log):
    """train_deepid2_main's work on this process (rank)."""
    say = print if par.rank == 0 else (lambda *a, **k: None)
    be = get_backend(backend)
    with par.lock(out_dir):
        if not resume and par.exists(os.path.join(out_dir, CHECKPOINT)):
            raise ValueError(f"{out_dir} already holds a training run: pass --resume to "
                             f"continue it, or choose another --out")
        cache_dir = cache_dir or os.path.join(out_dir, "cache")
        cache = par.build_cache(lambda progress: build_cache(data_dir, cache_dir, spec,
                                                             progress=progress))
        say(f"{len(cache.labels)} images of {len(cache.identities)} identities "
            f"({len(cache.skipped)} skipped); backend {be.name}, {be.max_threads()} threads"
            + (" per rank" if par.size > 1 else ""), file=sys.stderr)
        line = par.report_start(cfg.batch, groups)
        if line:
            say(line, flush=True, file=sys.stderr)
        task = DeepID2Task(cache, out_dir, cfg, be, parallel=par)
        loop = Loop(task, groups, par, log=log)
        try:
            state = loop.run(resume=resume)
        except KeyboardInterrupt:
            if par.size > 1:
                raise
            print(f"\ninterrupted: the last checkpoint in {out_dir} is whole; "
                  f"continue with --resume", file=sys.stderr)
            return None
        line = par.report_end(0 if loop.grads is None else loop.grads.size * 4)
        if line:
            say(line, file=sys.stderr)
        say(f"best epoch {state['best_epoch']} (validation accuracy {state['best_val']:.4f}); "
            f"model {os.path.join(out_dir, BEST)}, log {os.path.join(out_dir, LOG)}, "
            f"plot {os.path.join(out_dir, PLOT)}")
        return state
