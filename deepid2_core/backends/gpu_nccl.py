"""Multi-GPU pieces of data-parallel training (training/dist.py): the device
of a rank, and the NCCL gradient reduction. One process per GPU; the NCCL
unique id travels over MPI. NEVER RUN ON MORE THAN ONE GPU."""

import time

import cupy
import numpy as np
from cupy.cuda import nccl


def use_local_device(local_rank):
    """One process per GPU: the local rank picks the device, before the
    backend touches any. Nothing to pick without a GPU (get_backend says why)."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - get_backend says why in one line
        return
    if count:
        cupy.cuda.Device(local_rank % count).use()


class NcclReducer:
    """The flat gradient buffers live on the device; NCCL moves them. Same
    contract as training.dist.Reducer: reduce(local) -> the mean over all G
    micro-batches of every rank."""

    def __init__(self, comm, groups, deterministic):
        self.comm, self.groups, self.det = comm, groups, deterministic
        uid = comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None)
        self.nccl = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.out = self.gathered = None
        self.seconds, self.calls, self.bytes_sent = 0.0, 0, 0

    def reduce(self, local):
        R, n = self.comm.size, local.shape[1]
        if self.out is None:
            self.out = cupy.empty(n, np.float32)
            if self.det and self.groups > 1:
                self.gathered = cupy.empty((self.groups, n), np.float32)
        out = self.out
        stream = cupy.cuda.get_current_stream()
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
