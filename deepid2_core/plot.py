"""Training curves as a PNG, drawn with OpenCV (no plotting library needed).

Every panel has a title, labelled axes with tick labels (units in the axis
label), light grid lines at the ticks, and its legend below the axes, where
it never covers a curve.
"""

import math

import cv2
import numpy as np

COLOURS = [(200, 80, 30), (40, 140, 230), (60, 170, 60), (160, 60, 180)]  # BGR
BLACK, GREY = (0, 0, 0), (220, 220, 220)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def text(img, s, x, y, scale=0.4, colour=BLACK):
    cv2.putText(img, s, (int(x), int(y)), FONT, scale, colour, 1, cv2.LINE_AA)


def text_width(s, scale=0.4):
    return cv2.getTextSize(s, FONT, scale, 1)[0][0]


def vertical_text(img, s, x, y_centre, scale=0.45):
    """s written bottom to top, its left edge at x, centred on y_centre."""
    (w, h), base = cv2.getTextSize(s, FONT, scale, 1)
    tile = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(tile, s, (2, h + 2), FONT, scale, BLACK, 1, cv2.LINE_AA)
    tile = cv2.rotate(tile, cv2.ROTATE_90_COUNTERCLOCKWISE)
    th, tw = tile.shape[:2]
    y = int(y_centre - th / 2)
    y, tile = (0, tile[-y:]) if y < 0 else (y, tile)
    region = img[y:y + tile.shape[0], x:x + tw]
    np.minimum(region, tile[:region.shape[0], :region.shape[1]], out=region)


def nice_ticks(lo, hi, target=5):
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) inside [lo, hi]."""
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]
    return ticks, step


def tick_label(v, step):
    """v with the decimals its tick step needs (0.25 steps: two)."""
    if abs(v) >= 1e5 or step < 1e-4:
        return f"{v:.3g}"
    digits = 0
    while abs(step * 10 ** digits - round(step * 10 ** digits)) > 1e-6 * 10 ** digits:
        digits += 1
    return f"{v:.{digits}f}"


def legend_places(names, width, scale=0.42):
    """(dx, row) of each legend entry: a row of names, wrapped at width."""
    places, cx, row = [], 0, 0
    for name in names:
        w = 24 + text_width(name, scale) + 16
        if cx > 0 and cx + w > width:
            cx, row = 0, row + 1
        places.append((cx, row))
        cx += w
    return places


def legend(img, x, y, width, entries, scale=0.42):
    """Colour swatches and names from (x, y), 18 px a row, wrapped at width."""
    for (name, colour), (dx, row) in zip(entries, legend_places([n for n, _ in entries], width,
                                                                scale)):
        cx, cy = x + dx, y + 18 * row
        cv2.line(img, (cx, cy - 4), (cx + 18, cy - 4), colour, 2, cv2.LINE_AA)
        text(img, name, cx + 24, cy, scale, colour)


def panel(img, x0, y0, w, h, title, series, xlabel="epoch", ylabel="", scale=1.0):
    """One chart at (x0, y0) of size w x h: series [(name, [value per epoch])],
    epochs 1..n on x; values times `scale` on y (100: a fraction shown in %).
    Tick labels, the x label and the legend go below the frame (about 70 px),
    the y label left of the tick labels (about 75 px)."""
    cv2.putText(img, title, (x0, y0 - 10), FONT, 0.5, BLACK, 1, cv2.LINE_AA)
    n = max((len(ys) for _, ys in series), default=0)
    values = [v * scale for _, ys in series for v in ys if v is not None and np.isfinite(v)]
    if values:
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo) if hi - lo > 1e-12 else max(0.5 * abs(hi), 0.5)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.0, 1.0
    yticks, ystep = nice_ticks(lo, hi)
    lo, hi = min(lo, yticks[0]), max(hi, yticks[-1])

    def px(i, v):  # epoch index i (0-based), value v (scaled)
        fx = 0.5 if n <= 1 else i / (n - 1)
        return x0 + int(round(w * fx)), y0 + h - int(round(h * (v - lo) / (hi - lo)))

    for t in yticks:
        _, y = px(0, t)
        cv2.line(img, (x0, y), (x0 + w, y), GREY, 1)
        cv2.line(img, (x0 - 4, y), (x0, y), BLACK, 1)
        s = tick_label(t, ystep)
        text(img, s, x0 - 7 - text_width(s), y + 4)
    if n:
        xstep = max(1, nice_ticks(1, max(n, 2), 6)[1]) if n > 7 else 1
        for e in range(1, n + 1):
            if e % xstep and e != 1:
                continue
            x, _ = px(e - 1, lo)
            cv2.line(img, (x, y0 + h), (x, y0 + h + 4), BLACK, 1)
            s = str(e)
            text(img, s, x - text_width(s) // 2, y0 + h + 17)
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), BLACK, 1)
    text(img, xlabel, x0 + (w - text_width(xlabel, 0.45)) // 2, y0 + h + 36, 0.45)
    if ylabel:
        vertical_text(img, ylabel, max(0, x0 - 75), y0 + h // 2)
    for k, (name, ys) in enumerate(series):
        pts = [px(i, v * scale) for i, v in enumerate(ys) if v is not None and np.isfinite(v)]
        colour = COLOURS[k % len(COLOURS)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
    legend(img, x0, y0 + h + 60, w,
           [(name, COLOURS[k % len(COLOURS)]) for k, (name, _) in enumerate(series)])


def two_panels(path, left, right):
    """A 920 x 420 PNG of two panels; left, right: (title, series, ylabel, scale)."""
    img = np.full((420, 920, 3), 255, np.uint8)
    for x0, (title, series, ylabel, scale) in ((90, left), (560, right)):
        panel(img, x0, 40, 330, 290, title, series, ylabel=ylabel, scale=scale)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write the plot to {path}")
