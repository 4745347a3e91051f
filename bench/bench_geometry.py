"""Alignment and patch cutting per face, one thread: the numpy patch cutting
(tests/patch_reference.py, what patches.py ran before) against the C++ that
replaced it, on the shipped model's patches (verifier.safetensors'
patch_inputs, each with its flipped counterpart, on the mean shape as the
model was trained), and align_face: cv2.warpAffine against the C++ warp.

  python bench/bench_geometry.py [--min-time 1.0] [--image path.jpg]
"""
import argparse
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def shipped_patch_indices():
    """(layout, patch indices) of the shipped model, from its safetensors header."""
    path = os.path.join(bc.REPO, "deepid2_core", "models", "verifier.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    inputs = json.loads(meta["patch_inputs"])["inputs"]
    assert all(p["kind"] == "layout" and p["landmarks"] == "mean" for p in inputs)
    return inputs[0]["layout"], [p["index"] for p in inputs]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    p.add_argument("--image", help="a 250 x 250 face (default: a random one)")
    a = p.parse_args()
    bc.set_thread_env(1)
    sys.path.insert(0, bc.REPO)
    sys.path.insert(0, os.path.join(bc.REPO, "tests"))
    import cv2
    import numpy as np
    import patch_reference as ref
    from deepid2_core.face import align, patches
    cv2.setNumThreads(1)

    rng = np.random.default_rng(0)
    img = (cv2.imread(a.image) if a.image
           else cv2.GaussianBlur(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8), (0, 0), 2))
    name, indices = shipped_patch_indices()
    layout = patches.get_layout(name)
    lm = align.to_pixels(align.MEAN_SHAPE, (img.shape[1], img.shape[0]))

    def cut_with(cut_patch, cut_flipped):
        return lambda: [(cut_patch(img, lm, layout, k), cut_flipped(img, lm, layout, k))
                        for k in indices]

    for (x, y) in zip(cut_with(ref.cut_patch, ref.cut_flipped)(),
                      cut_with(patches.cut_patch, patches.cut_flipped)()):
        assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
    pts = lm + rng.normal(0, 4, (5, 2))
    m = align.alignment_matrix(pts)
    runs = {
        f"cut {len(indices)} patches + flipped, numpy": cut_with(ref.cut_patch, ref.cut_flipped),
        f"cut {len(indices)} patches + flipped, C++": cut_with(patches.cut_patch,
                                                               patches.cut_flipped),
        "align_face 250x250, cv2.warpAffine": lambda: cv2.warpAffine(
            img, m, (250, 250), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
        "align_face 250x250, C++": lambda: align.align_face(img, pts),
    }
    print(f"{bc.cpu_name()}, 1 thread; layout {name}, patches {indices}")
    for label, fn in runs.items():
        r = bc.measure(fn, reps=20, warmup=3, min_time=a.min_time)
        print(f"  {label:42s} {r['median_ms']:8.3f} ms  (quartiles {r['p25_ms']:.3f}.."
              f"{r['p75_ms']:.3f}, n={r['n']})")


if __name__ == "__main__":
    main()
