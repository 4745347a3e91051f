"""Training curves as a PNG, drawn with OpenCV (no plotting library needed)."""

import cv2
import numpy as np

COLOURS = [(200, 80, 30), (40, 140, 230), (60, 170, 60), (160, 60, 180)]  # BGR


def panel(img, x0, y0, w, h, title, series):
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
    cv2.putText(img, title, (x0 + 5, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    values = [v for _, ys in series for v in ys if v is not None and np.isfinite(v)]
    if not values:
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(ys) for _, ys in series)
    for k, (name, ys) in enumerate(series):
        pts = [(x0 + int(w * (i / max(n - 1, 1))), y0 + h - int(h * (v - lo) / (hi - lo)))
               for i, v in enumerate(ys) if v is not None and np.isfinite(v)]
        colour = COLOURS[k % len(COLOURS)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 2, colour, -1, cv2.LINE_AA)
        cv2.putText(img, name, (x0 + w - 150, y0 + 18 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    for v, yy in ((hi, y0 + 10), (lo, y0 + h - 2)):
        cv2.putText(img, f"{v:.3g}", (x0 - 48, yy), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)


def plot_history(history, path):
    """history: list of epoch dicts from the JSONL log. Writes a PNG to path."""
    img = np.full((360, 900, 3), 255, np.uint8)
    get = lambda key: [h.get(key) for h in history]  # noqa: E731
    panel(img, 60, 30, 360, 290, "loss per epoch",
           [("train total", get("loss")), ("ident", get("ident")), ("verif", get("verif"))])
    panel(img, 510, 30, 360, 290, "top-1 accuracy per epoch",
           [("train", get("train_acc")), ("validation", get("val_acc"))])
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write the plot to {path}")
