"""Whole-step helpers of the gpu backend (issue 22), given its kit (gpu.KIT):

  sgd_update_many(kit, params, grads, velocities, lr, momentum, weight_decay)
      gpu.sgd_update on every (param, grad, velocity) of the lists, in one
      launch (kernels/sgd_multi.cu), bit-identical; lr, momentum and
      weight_decay are numbers or lists of one number per tensor.
  capture(kit, fn, warmup) -> CapturedStep
      fn's launches as a graph: step.replay() (or step()) runs them again,
      on the same memory, with one launch from the host.

gpu.py exposes them as sgd_update_many and capture_graph.
"""

import numpy as np

from deepid2_core.backends import gpu_checks as chk
from deepid2_core.backends import sgd_hyperparameters

_tables = {}


# ----------------------------------------------------------------------------
def sgd_update_many(kit, params, grads, velocities, lr, momentum=0.9, weight_decay=0.0):
    """In place, for every i: v = momentum * v - lr * (g + weight_decay * p); p += v
    (gpu.sgd_update's checks and bits), in one launch. Returns None.

    The tensors' addresses go to the device once (a table kept for the same
    tensors), the hyperparameters whenever they change: the launch itself
    copies nothing, so a captured step (capture()) may hold it."""
    cp = kit.cupy
    hyper = np.array(sgd_hyperparameters(params, grads, velocities, lr, momentum, weight_decay),
                     dtype=np.float32).reshape(-1, 3)
    live, rows = [], []
    for i, (p, gr, v) in enumerate(zip(params, grads, velocities)):
        p, v = chk.checked(cp, p, f"params[{i}]"), chk.checked(cp, v, f"velocities[{i}]")
        gr = chk.checked(cp, gr, f"grads[{i}]")
        chk.expect_shape(gr, f"grads[{i}]", tuple(p.shape), "same as params[i]")
        chk.expect_shape(v, f"velocities[{i}]", tuple(p.shape), "same as params[i]")
        if p.size:
            live.append(i)
            rows.append((p.data.ptr, gr.data.ptr, v.data.ptr, p.size))
    if not rows:
        return None
    table, hyper_dev, starts, blocks = _table(kit, tuple(rows))
    want = np.ascontiguousarray(hyper[live])
    if not np.array_equal(hyper_dev[1], want):
        hyper_dev[0].set(want)
        hyper_dev[1] = want
    kit.launch("sgd_multi", "sgd_update_multi", (blocks,), 256,
              (table, hyper_dev[0], starts, np.int32(len(rows))))
    return None


def _table(kit, rows):
    """(addresses and counts, [hyperparameters on the device, their host copy],
    first block of each tensor, blocks) for these tensors, kept for the next
    call with the same addresses and sizes."""
    cp = kit.cupy
    key = (rows, id(cp), cp.cuda.Device().id)
    if key not in _tables:
        blocks = [kit.blocks(r[3]) for r in rows]
        starts = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        hyper = np.full((len(rows), 3), np.nan, dtype=np.float32)
        if len(_tables) > 16:
            _tables.clear()
        _tables[key] = (cp.asarray(np.array(rows, dtype=np.int64)),
                        [cp.asarray(hyper), hyper], cp.asarray(starts), int(starts[-1]))
    return _tables[key]


# ----------------------------------------------------------------------------
class CapturedStep:
    """A step's device work as a CUDA graph (capture()). replay() launches it
    on the current stream and returns what fn returned at capture: the same
    arrays, which the replay overwrites."""

    def __init__(self, cp, graph, stream, pool, outputs):
        self._cp, self._graph, self._stream, self._pool = cp, graph, stream, pool
        self.outputs = outputs

    def replay(self):
        self._graph.launch(stream=self._cp.cuda.get_current_stream())
        return self.outputs

    __call__ = replay


def capture(kit, fn, warmup=1):
    """Capture fn()'s device work as a graph, for small batches where launches
    cost more than the kernels.

    fn runs `warmup` times first, for real (compiling kernels, filling the
    backend's caches: a capture may not copy from the host); then once under
    capture, where nothing runs. Every replay redoes that work on the same
    memory: fn's inputs are read where they were (write new batches into
    them), its outputs written where they were (CapturedStep.outputs).
    Arrays made during the capture come from a memory pool of the graph's
    own, so that nothing else reuses their memory between replays.

    fn must not read device data on the host (joint_loss and regression_loss
    return Python numbers: capture the rest of the step, read the loss
    after replay). The index checks are off while it is captured; debug mode
    (a sync after every launch) must be off."""
    cp = kit.cupy
    if kit.state["debug"]:
        raise RuntimeError("capture: the gpu backend's debug mode synchronises after every "
                           "launch, which a graph cannot hold: set_debug(False) first")
    for _ in range(int(warmup)):
        fn()
    kit.sync("the warm-up before a capture")
    pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
    checks, kit.state["index_checks"] = kit.state["index_checks"], False
    try:
        with cp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                outputs = fn()
            finally:
                graph = stream.end_capture()
    except Exception as e:  # noqa: BLE001 - CUDA's capture errors, from any call in fn
        raise RuntimeError(f"capture: fn did what a CUDA graph cannot hold ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    finally:
        kit.state["index_checks"] = checks
    return CapturedStep(cp, graph, stream, pool, outputs)
