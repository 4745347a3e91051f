"""The C++ YuNet (cpp/src/face/yunet*.cpp, through deepid2_core._cpu) against
cv2.FaceDetectorYN on every image of the data sets, read with cv2.imread.

    OMP_NUM_THREADS=1 python experiments/yunet_cpp_agreement.py \
        [--data ../shared/data] [--sets lfw,celeba-lfwstyle] [--limit N] [--no-rule]

Per data set: the share of images where both find the same number of faces
(acceptance: >= 99.9%), the share where every box and landmark is within 1 px
(>= 99.5%), the worst images; milliseconds per image of each, one thread
(score 0.6, NMS 0.3, top 5000, input size = image size); and how many images
the "yunet" rule finds no face in (find_faces: retries, no Haar fallback), in
C++ and in Python (face.box.yunet_raw_boxes, max_side 1024), with the images
where the two disagree. Prints a summary per set and a JSON line.
"""

import argparse
import glob
import json
import os
import sys
import time

import cv2
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from deepid2_core import _cpu  # noqa: E402
from deepid2_core.face import box as B  # noqa: E402
from deepid2_core.face.detect import YUNET_MODEL  # noqa: E402

CPP_MODEL = os.path.join(ROOT, "deepid2_core", "models", "yunet.safetensors")


def matched_error(ref, out):
    """Largest |difference| over boxes and landmarks, each reference face paired with
    the C++ face nearest it (the order can differ where two scores tie)."""
    if len(ref) == 0:
        return 0.0
    worst = 0.0
    for r in ref:
        d = np.abs(out[:, :14] - r[:14]).max(1)
        worst = max(worst, float(d.min()))
    return worst


def run_set(name, files, rule):
    cv_net = cv2.FaceDetectorYN.create(YUNET_MODEL, "", (320, 320), 0.6, 0.3, 5000)
    same_n = close = 0
    t_cv = t_cpp = 0.0
    worst = []
    cpp_none, py_none, rule_diff = 0, 0, []
    for i, f in enumerate(files):
        img = cv2.imread(f)
        t0 = time.perf_counter()
        cv_net.setInputSize((img.shape[1], img.shape[0]))
        _, ref = cv_net.detect(img)
        t1 = time.perf_counter()
        out = _cpu.yunet_detect(CPP_MODEL, img, 0.6)
        t2 = time.perf_counter()
        t_cv += t1 - t0
        t_cpp += t2 - t1
        ref = np.zeros((0, 15), np.float32) if ref is None else ref
        err = np.inf
        if len(ref) == len(out):
            same_n += 1
            err = matched_error(ref, out)
            close += err <= 1.0
        worst.append((err, len(ref), len(out), os.path.relpath(f, os.path.dirname(files[0]) + "/..")))
        if rule:
            cpp_found = len(_cpu.yunet_find_faces(CPP_MODEL, img)) > 0
            py_found = len(B.yunet_raw_boxes(img, max_side=1024)[0]) > 0
            cpp_none += not cpp_found
            py_none += not py_found
            if cpp_found != py_found:
                rule_diff.append(os.path.basename(f))
        if (i + 1) % 2000 == 0:
            print(f"  {name}: {i + 1}/{len(files)}", flush=True)
    n = len(files)
    worst.sort(key=lambda w: -w[0])
    res = dict(set=name, images=n, same_count=same_n / n, within_1px=close / n,
               ms_cv2=1000 * t_cv / n, ms_cpp=1000 * t_cpp / n,
               worst=[dict(error=(None if not np.isfinite(w[0]) else round(w[0], 4)),
                           cv2_faces=w[1], cpp_faces=w[2], image=w[3]) for w in worst[:5]])
    if rule:
        res.update(rule_no_face_cpp=cpp_none, rule_no_face_python=py_none,
                   rule_disagree=rule_diff[:20], rule_disagree_count=len(rule_diff))
    print(f"{name}: {n} images; same face count {100 * same_n / n:.3f}%; boxes and "
          f"landmarks within 1 px {100 * close / n:.3f}%; ms/image cv2 {res['ms_cv2']:.2f}, "
          f"C++ {res['ms_cpp']:.2f}")
    if rule:
        print(f"  yunet rule (no Haar): no face in {cpp_none} (C++) / {py_none} (Python) images; "
              f"{len(rule_diff)} disagree")
    print(json.dumps(res), flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("DEEPID2_DATA",
                                                    os.path.join(ROOT, "..", "shared", "data")))
    p.add_argument("--sets", default="lfw,celeba-lfwstyle")
    p.add_argument("--limit", type=int, default=0, help="first N images per set (0: all)")
    p.add_argument("--no-rule", action="store_true", help="skip the find_faces counts")
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for one-thread timings", file=sys.stderr)
    log = cv2.utils.logging
    log.setLogLevel(log.LOG_LEVEL_ERROR)  # OpenCV 5's "targets not supported" warning
    for name in a.sets.split(","):
        files = sorted(glob.glob(os.path.join(a.data, name, "*", "*.jpg")))
        if not files:
            raise SystemExit(f"no images under {os.path.join(a.data, name)}")
        run_set(name, files[:a.limit or None], not a.no_rule)


if __name__ == "__main__":
    main()
