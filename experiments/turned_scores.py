"""Why Pipeline::detect searches the other quarter turns only below a YuNet
score of 0.905, and takes a turn only when it wins by 0.02 (issue 25).

YuNet's five points do not show the roll of a sideways face, but its score
does. This script scores N random LFW photos (seed 1) with the raw C++ YuNet
(find_faces, no turn search) at their four quarter turns and prints the
score quantiles, then simulates the rule for each threshold: how many
upright photos pay for the search, and how many turned photos come out
upright, turned wrongly, or kept as given.

    python experiments/turned_scores.py [--n 1500] [--data ../shared/data]
"""
import argparse
import random
from pathlib import Path

import cv2
import numpy as np

from deepid2_core import _cpu

MODEL = str(Path(__file__).resolve().parents[1] / "deepid2_core/models/yunet.safetensors")
MARGIN = 0.02


def top_score(bgr):
    found = _cpu.yunet_find_faces(MODEL, np.ascontiguousarray(bgr))
    return float(found[:, 14].max()) if len(found) else -1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    a = ap.parse_args()
    paths = sorted(Path(a.data, "lfw").glob("*/*.jpg"))
    random.seed(1)
    paths = random.sample(paths, a.n)
    s = np.array([[top_score(np.rot90(cv2.imread(str(p)), k)) for k in range(4)] for p in paths])
    print(f"{a.n} LFW photos, YuNet's best score at each quarter turn (C++ find_faces)")
    print("upright: min %.4f, 1%% %.4f, 5%% %.4f, median %.4f" %
          (s[:, 0].min(), *np.quantile(s[:, 0], [0.01, 0.05, 0.5])))
    for k in (1, 2, 3):
        print(f"turned {90 * k:3d} deg, as given: median %.4f, 99%% %.4f, max %.4f" %
              (*np.quantile(s[:, k], [0.5, 0.99]), s[:, k].max()))
    print("\nthreshold  upright searched  turned read upright  turned wrongly  kept as given")
    for t in (0.89, 0.9, 0.905, 0.91, 0.92):
        right = wrong = kept = 0
        for k in (1, 2, 3):             # the photo turned k: as given scores s[:, k]
            given = s[:, k]
            others = np.delete(s, k, 1)
            best = np.delete(np.arange(4), k)[others.argmax(1)]
            taken = (given < t) & (others.max(1) > given + MARGIN)
            right += (taken & (best == 0)).sum()
            wrong += (taken & (best != 0)).sum()
            kept += (~taken).sum()
        n = 3 * a.n
        print(f"{t:9.3f}  {(s[:, 0] < t).mean():16.1%}  {right / n:19.2%}  {wrong:14d}  {kept:13d}")


if __name__ == "__main__":
    main()
