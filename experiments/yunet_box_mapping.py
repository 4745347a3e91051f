"""The measured mapping from YuNet's face box to the box convention the landmark nets
were trained on (the Haar rule of `face.box`), on MTFL's training images.

    python experiments/yunet_box_mapping.py --data ../shared/data/mtfl80

For every training image where both find a face and the boxes overlap (IoU > 0.3), the
Haar box's centre offset and side are expressed in units of YuNet's box size
s = sqrt(w h): dx = (haar_cx - yunet_cx) / s, dy likewise, k = haar_side / s. Prints
the medians (the mapping `face.box.YUNET_TO_HAAR` holds), their spread, and the counts.
YuNet runs as `face.box` runs it (its small-image retries included).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deepid2_core.face import box as B  # noqa: E402
from deepid2_core.face.image import read_image  # noqa: E402
from deepid2_core.training import mtfl as TM  # noqa: E402


def iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the mtfl80 folder")
    p.add_argument("--limit", type=int)
    a = p.parse_args(argv)
    rows = TM.read_mtfl(a.data, TM.TRAIN_LIST)[:a.limit]
    d, both, haar_only, yunet_only, neither = [], 0, 0, 0, 0
    for rel, _ in rows:
        img = read_image(os.path.join(a.data, rel))[0]
        h = B.face_boxes(img, "haar")
        y, _ = B.yunet_raw_boxes(img)
        if h.found and len(y):
            yb = y[0]
            if iou(h.boxes[0], yb) > 0.3:
                both += 1
                s = np.sqrt(yb[2] * yb[3])
                hc = h.boxes[0][:2] + h.boxes[0][2:] / 2
                yc = yb[:2] + yb[2:] / 2
                d.append([(hc[0] - yc[0]) / s, (hc[1] - yc[1]) / s, h.boxes[0][2] / s])
        haar_only += h.found and not len(y)
        yunet_only += (not h.found) and len(y) > 0
        neither += (not h.found) and not len(y)
    d = np.array(d)
    med = np.median(d, 0)
    iqr = np.percentile(d, 75, 0) - np.percentile(d, 25, 0)
    print(json.dumps(dict(images=len(rows), overlapping=both, haar_only=int(haar_only),
                          yunet_only=int(yunet_only), neither=int(neither),
                          dx=round(float(med[0]), 4), dy=round(float(med[1]), 4),
                          k=round(float(med[2]), 4), iqr=[round(float(v), 4) for v in iqr])))


if __name__ == "__main__":
    main()
