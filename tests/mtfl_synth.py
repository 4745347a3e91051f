"""A tiny MTFL-style folder of drawn faces for the landmark training tests
(training/test_mtfl.py, training/test_landmarks.py, training/test_lock.py)."""
import os

import cv2
import numpy as np

from deepid2_core.training import mtfl as TM


def tiny_mtfl(root, n=12):
    """An MTFL-style folder: drawn faces, a list file, one net_7876 line ~28 px too high."""
    rng = np.random.default_rng(4)
    lines = []
    for i in range(n):
        img = np.full((80, 80, 3), 110, np.uint8)
        pts = np.array([[30, 34], [50, 34], [40, 44], [33, 54], [47, 54]], float)
        pts += rng.uniform(-4, 4, (5, 2))
        for k, (px, py) in enumerate(pts):
            cv2.circle(img, (int(round(px)), int(round(py))), 2, (30 * k,) * 3, -1)
        sub = "net_7876" if i == 0 else "lfw_5590"
        os.makedirs(root / sub, exist_ok=True)
        cv2.imwrite(str(root / sub / f"f{i}.png"), img)
        if i == 0:
            pts[:, 1] -= 28  # as MTFL80's broken net_7876 lines
        lines.append(f"{sub}/f{i}.png " + " ".join(f"{v:.2f}" for v in
                                                  list(pts[:, 0]) + list(pts[:, 1])))
    for name in (TM.TRAIN_LIST, TM.TEST_LIST):
        (root / name).write_text("\n".join(lines) + "\n")
    return root
