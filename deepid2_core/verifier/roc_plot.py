"""ROC curves to CSV and to a PNG drawn with OpenCV (the style of plot.py)."""
import csv

import cv2
import numpy as np

from ..plot import COLOURS, legend, legend_places, text, text_width, vertical_text

_BLACK, _GREY = (0, 0, 0), (215, 215, 215)


def write_roc_csv(path, roc):
    """Columns threshold, far, tar; the first row is threshold inf (nothing accepted)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["threshold", "far", "tar"])
        for t, fa, ta in zip(roc.thresholds, roc.far, roc.tar):
            w.writerow([repr(float(t)), repr(float(fa)), repr(float(ta))])


def plot_roc(path, curves, title="ROC", min_far=1e-4):
    """curves: {name: Roc}. TAR against FAR on a log axis from min_far to 1
    (points at FAR 0 are drawn at min_far), both in %; the legend below the
    axes. Writes a PNG to path."""
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    if not 0 < min_far < 1:
        raise ValueError(f"min_far must be in (0, 1), got {min_far}")
    x0, y0, w, h = 90, 40, 520, 400
    rows = 1 + legend_places(list(curves), w)[-1][1]
    img = np.full((y0 + h + 62 + 18 * rows, 640, 3), 255, np.uint8)  # 520 x 640: one row
    lo = np.log10(min_far)

    def px(far, tar):
        fx = (np.log10(np.maximum(far, min_far)) - lo) / -lo
        return np.stack([x0 + fx * w, y0 + h - tar * h], 1).round().astype(np.int32)

    for e in range(int(np.ceil(lo)), 1):         # decades of FAR, tenths of TAR
        x = int(px(np.array([10.0 ** e]), np.array([0.0]))[0, 0])
        cv2.line(img, (x, y0), (x, y0 + h), _GREY, 1)
        cv2.line(img, (x, y0 + h), (x, y0 + h + 4), _BLACK, 1)
        label = f"{100 * 10.0 ** e:g}"
        text(img, label, x - text_width(label) // 2, y0 + h + 17)
    for k in range(11):
        y = y0 + h - int(round(h * k / 10))
        cv2.line(img, (x0, y), (x0 + w, y), _GREY, 1)
        cv2.line(img, (x0 - 4, y), (x0, y), _BLACK, 1)
        label = str(10 * k)
        text(img, label, x0 - 7 - text_width(label), y + 4)
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), _BLACK, 1)
    cv2.putText(img, title, (x0, y0 - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.55, _BLACK, 1,
                cv2.LINE_AA)
    xlabel = "false accept rate, FAR (%, log scale)"
    text(img, xlabel, x0 + (w - text_width(xlabel, 0.45)) // 2, y0 + h + 36, 0.45)
    vertical_text(img, "true accept rate, TAR (%)", 15, y0 + h // 2)
    for k, (name, roc) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        cv2.polylines(img, [px(roc.far, roc.tar)], False, colour, 2, cv2.LINE_AA)
    legend(img, x0, y0 + h + 60, w,
           [(name, COLOURS[k % len(COLOURS)]) for k, name in enumerate(curves)])
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write the ROC plot to {path}")
