"""Procedural synthetic faces in LFW's layout, for tests and for training runs
that must not depend on real data.

Each identity is a fixed set of face parameters drawn once from
``default_rng([seed, identity])``; each image redraws only the nuisance
factors (pose, scale, expression, lighting, background, blur, noise) from
``default_rng([seed, identity, 1 + image])``. Drawing happens in a 250x250
"LFW frame" (coordinates below are in those pixels) whose face sits where the
deep-funneled LFW faces sit (eyes near y=112, x=104/148; mouth near y=155), so
the same fixed central crop serves both. Everything is OpenCV drawing plus
fixed-seed numpy, so the same seed writes byte-identical JPEGs.
"""
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np

from .progress import Progress

_SHIFT = 4                      # cv2 fixed-point bits: sub-pixel antialiased shapes
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
CX, CY = 125.0, 130.0           # face centre in the 250x250 LFW frame

_HAIR = np.array([[20, 20, 25], [25, 40, 70], [40, 70, 120], [80, 130, 190],
                  [30, 60, 150], [150, 150, 155], [210, 210, 215]], np.float64)  # BGR
_IRIS = np.array([[20, 40, 70], [30, 60, 100], [140, 110, 60], [90, 120, 70],
                  [110, 110, 100]], np.float64)


def _p(x):
    """Float pixel coordinate -> cv2 fixed-point int."""
    return int(round(x * _ONE))


def _pts(xy):
    return np.round(np.asarray(xy) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _col(c):
    return tuple(float(v) for v in np.clip(c, 0, 255))


_BANKS = {}


def _noise_bank(n):
    """2n fixed standard-normal floats; drawing fresh ones per image is the slowest step."""
    if n not in _BANKS:
        _BANKS[n] = np.random.default_rng(250).standard_normal(2 * n, dtype=np.float32)
    return _BANKS[n]


def identity_params(seed, identity):
    """The fixed look of one identity (a dict of floats and colours)."""
    r = np.random.default_rng([seed, identity])
    u = r.uniform
    t = u(0, 1)                                   # skin: light .. dark, plus a hue jitter
    skin = (1 - t) * np.array([185, 205, 235]) + t * np.array([60, 95, 150]) + r.normal(0, 8, 3)
    hair = _HAIR[r.integers(len(_HAIR))] + r.normal(0, 12, 3)
    return dict(
        fw=u(40, 53), fh=u(55, 68), jaw=u(0.0, 0.35), chin_y=u(-3, 5),
        skin=skin, lip=skin * np.array([0.75, 0.7, 1.05]) + r.normal(0, 10, 3),
        eye_dx=u(18, 25), eye_y=u(-22, -14), eye_w=u(7.5, 12), eye_h=u(3.5, 5.5),
        eye_tilt=u(-8, 8), iris=_IRIS[r.integers(len(_IRIS))] + r.normal(0, 10, 3),
        iris_r=u(2.6, 4.0),
        brow_up=u(7, 13), brow_len=u(12, 21), brow_th=u(1.5, 4.5), brow_ang=u(-14, 14),
        brow_arch=u(-1, 5), brow_col=hair * u(0.4, 0.9),
        nose_len=u(14, 26), nose_w=u(5, 12), nose_dark=u(0.55, 0.8),
        mouth_y=u(20, 30), mouth_w=u(12, 22), lip_th=u(1.5, 4.5), mouth_curve=u(-3, 3),
        hair=hair, bald=r.random() < 0.08, long=r.random() < 0.3,
        hairline=u(0.6, 0.9), recede=u(-0.15, 0.35), part=u(-0.6, 0.6),
        part_depth=u(0, 10), volume=u(2, 16), fringe=r.normal(0, 3, 4),
        ear=u(0.7, 1.3), mole=(r.random() < 0.3, u(-0.6, 0.6), u(-0.1, 0.5), u(1.2, 2.5)),
        glasses=(r.random() < 0.25, r.integers(2), u(1.2, 2.6), r.uniform(0, 120, 3), u(1.2, 1.6)),
        beard=(r.random() < 0.2, r.random() < 0.25, u(0.35, 0.85)),
    )


def _face_contour(p, dx=0.0):
    """Egg-shaped outline: an ellipse whose lower half narrows by `jaw`."""
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    s = np.sin(t)
    x = p["fw"] * np.cos(t) * (1 - p["jaw"] * np.clip(s, 0, None) ** 2)
    y = p["fh"] * s + np.clip(s, 0, None) ** 4 * p["chin_y"]
    return np.stack([CX + dx + x, CY + y], 1)


def _hair_polygon(p):
    """Hair cap: an ellipse arc above the head, closed by a hairline curve."""
    fw, fh, v = p["fw"], p["fh"], p["volume"]
    t = np.linspace(np.pi, 2 * np.pi, 40)
    outer = np.stack([CX + (fw + v) * np.cos(t), CY - 4 + (fh + v) * np.sin(t)], 1)
    side = 0.15 if not p["long"] else 1.05       # how far down the sides hair reaches
    xs = np.linspace(1, -1, 30)
    top = CY - fh * p["hairline"]
    y = top + fh * p["recede"] * xs ** 2 + p["part_depth"] * np.exp(-((xs - p["part"]) / 0.12) ** 2)
    y += sum(a * np.sin((k + 1) * np.pi * xs) for k, a in enumerate(p["fringe"]))
    inner = np.stack([CX + 0.97 * fw * xs, y], 1)
    down = [[CX + fw + v, CY + fh * side], [CX + fw * 0.97, CY + fh * side * 0.8]]
    return np.concatenate([outer, down, inner, [[CX - fw * 0.97, CY + fh * side * 0.8],
                                                [CX - fw - v, CY + fh * side]]])


def _eye(img, p, x, y, openness, look):
    """Sclera ellipse, an iris clipped to it (via a small mask), then lids."""
    w, h = p["eye_w"], p["eye_h"] * openness
    x0, y0 = int(x - w - 3), int(y - p["eye_h"] - 3)
    roi = img[y0:y0 + int(2 * p["eye_h"]) + 7, x0:x0 + int(2 * w) + 7]
    lx, ly = x - x0, y - y0
    mask = np.zeros(roi.shape[:2], np.uint8)
    ang = p["eye_tilt"] * (1 if x > CX else -1)
    axes = (_p(w), _p(max(h, 0.4)))
    cv2.ellipse(mask, (_p(lx), _p(ly)), axes, ang, 0, 360, 255, -1, _AA, _SHIFT)
    eye = np.full_like(roi, 235)
    c = (_p(lx + look * w * 0.35), _p(ly))
    cv2.circle(eye, c, _p(p["iris_r"]), _col(p["iris"]), -1, _AA, _SHIFT)
    cv2.circle(eye, c, _p(p["iris_r"] * 0.45), (15, 15, 15), -1, _AA, _SHIFT)
    a = mask[..., None].astype(np.float32) / 255
    roi[:] = (roi * (1 - a) + eye * a).astype(np.uint8)
    cv2.ellipse(img, (_p(x), _p(y)), axes, ang, 180, 360, (30, 30, 40), 1, _AA, _SHIFT)


def _brow(img, p, x, y, side):
    L, a = p["brow_len"], np.deg2rad(p["brow_ang"])
    xs = np.linspace(-0.5, 0.5, 9) * L
    ys = -p["brow_arch"] * (1 - (2 * xs / L) ** 2) + side * xs * np.tan(a) * 0.5
    pts = np.stack([x + side * xs, y + ys], 1)
    th = max(1, int(round(p["brow_th"])))
    cv2.polylines(img, [_pts(pts)], False, _col(p["brow_col"]), th, _AA, _SHIFT)


def render(p, r, size=250):
    """One image of identity `p`, nuisance factors drawn from generator `r`."""
    u = r.uniform
    # hair volume and the eyes' height (head pitch) vary a little per image
    p = dict(p, volume=p["volume"] + u(-3, 3), eye_y=p["eye_y"] + u(-1, 1))
    yaw, smile, mouth_open = u(-1, 1), u(0, 1), (u(0, 1) if r.random() < 0.3 else 0.0)
    openness = u(0.15, 0.4) if r.random() < 0.07 else u(0.7, 1.15)
    # background: a flat colour, low-frequency texture and a few clutter shapes
    grey = u(30, 225)
    bg = grey + (r.uniform(20, 235, 3) - grey) * u(0.1, 0.7)    # muted, like indoor scenes
    noise = r.normal(0, u(5, 35), (6, 6, 3)) * [[[0.5, 0.5, 0.5]]] + r.normal(0, u(5, 30), (6, 6, 1))
    tex = cv2.resize(noise.astype(np.float32), (250, 250), interpolation=cv2.INTER_LINEAR)
    img = cv2.add(tex, (*bg, 0.0), dtype=cv2.CV_8U)          # saturating
    for _ in range(r.integers(0, 4)):
        c = _col(grey + (r.uniform(0, 255, 3) - grey) * 0.7)
        a, b = r.uniform(0, 250, 2), r.uniform(0, 250, 2)
        if r.random() < 0.5:
            cv2.rectangle(img, (_p(a[0]), _p(a[1])), (_p(b[0]), _p(b[1])), c, -1, _AA, _SHIFT)
        else:
            cv2.circle(img, (_p(a[0]), _p(a[1])), _p(u(10, 60)), c, -1, _AA, _SHIFT)
    skin, fw, fh = _col(p["skin"]), p["fw"], p["fh"]
    shadow = _col(p["skin"] * p["nose_dark"])
    if p["long"] and not p["bald"]:           # hair behind the head, down to the shoulders
        cv2.ellipse(img, (_p(CX), _p(CY + 10)), (_p(fw + p["volume"]), _p(fh + 35)), 0, 0, 360,
                    _col(p["hair"] * 0.85), -1, _AA, _SHIFT)
    shirt = _col(r.uniform(0, 255, 3))
    cv2.fillPoly(img, [_pts([[CX - 0.5 * fw, CY + fh - 20], [CX + 0.5 * fw, CY + fh - 20],
                             [CX + 0.55 * fw, 250], [CX - 0.55 * fw, 250]])], skin, _AA, _SHIFT)
    cv2.ellipse(img, (_p(CX), _p(250 + 10)), (_p(fw * 2.2), _p(45)), 0, 180, 360, shirt, -1,
                _AA, _SHIFT)
    fdx = yaw * 7.0                            # inner features shift toward the yaw side
    for side in (-1, 1):                       # ears shrink on the side turned away
        ew = 6 * p["ear"] * (1 + 0.5 * side * yaw)
        cv2.ellipse(img, (_p(CX + side * (fw - 1)), _p(CY - 6)), (_p(max(ew, 1)), _p(13 * p["ear"])),
                    0, 0, 360, shadow, -1, _AA, _SHIFT)
    cv2.fillPoly(img, [_pts(_face_contour(p))], skin, _AA, _SHIFT)
    on, moustache, dens = p["beard"]
    hair_on_skin = _col(p["hair"] * dens + p["skin"] * (1 - dens))
    if on:
        c = _face_contour(p)
        low = c[c[:, 1] > CY + p["mouth_y"] - 12]
        cv2.fillPoly(img, [_pts(low)], hair_on_skin, _AA, _SHIFT)
    if not p["bald"]:
        cv2.fillPoly(img, [_pts(_hair_polygon(p))], _col(p["hair"]), _AA, _SHIFT)
    ey = CY + p["eye_y"]
    look = u(-1, 1) * 0.6
    for side in (-1, 1):
        ex = CX + fdx + side * p["eye_dx"] * (1 + 0.08 * side * yaw)
        _eye(img, p, ex, ey, openness, look + yaw * 0.4)
        _brow(img, p, ex, ey - p["brow_up"] + u(-1, 1), side)
    ndx = fdx * 1.6                            # the nose tip moves most with yaw
    nb = [[CX + fdx + 3, ey + 2], [CX + ndx + p["nose_w"] * 0.35, ey + p["nose_len"]]]
    cv2.polylines(img, [_pts(nb)], False, shadow, 1, _AA, _SHIFT)
    ny = ey + p["nose_len"]
    for side in (-1, 1):
        cv2.ellipse(img, (_p(CX + ndx + side * p["nose_w"] * 0.45), _p(ny + 2)),
                    (_p(p["nose_w"] * 0.22), _p(1.6)), 0, 0, 360, _col(p["skin"] * 0.45), -1,
                    _AA, _SHIFT)
    cv2.ellipse(img, (_p(CX + ndx), _p(ny + 1)), (_p(p["nose_w"] * 0.6), _p(3)), 0, 10, 170,
                shadow, 1, _AA, _SHIFT)
    my, mw = CY + p["mouth_y"], p["mouth_w"] * (1 + 0.15 * smile)
    curve = p["mouth_curve"] + 4 * smile
    xs = np.linspace(-1, 1, 15)
    upper = np.stack([CX + fdx * 1.2 + mw * xs, my - curve * (1 - xs ** 2) + curve], 1)
    gap = 7 * mouth_open
    lower = np.stack([upper[::-1, 0],
                      upper[::-1, 1] + gap * (1 - xs ** 2) + p["lip_th"] * (1 - xs ** 2)], 1)
    if on or moustache:
        cv2.fillPoly(img, [_pts([[CX + fdx - mw * 0.9, my - 1], [CX + fdx, my - 9],
                                 [CX + fdx + mw * 0.9, my - 1], [CX + fdx, my - 4]])],
                     hair_on_skin, _AA, _SHIFT)
    cv2.fillPoly(img, [_pts(np.concatenate([upper, lower]))], _col(p["lip"]), _AA, _SHIFT)
    if gap > 1:
        inner = np.stack([upper[3:-3, 0], upper[3:-3, 1] + 1.5], 1)
        inner2 = np.stack([inner[::-1, 0], inner[::-1, 1] + gap * (1 - xs[3:-3] ** 2)], 1)
        cv2.fillPoly(img, [_pts(np.concatenate([inner, inner2]))], (40, 30, 60), _AA, _SHIFT)
    cv2.polylines(img, [_pts(upper)], False, _col(p["lip"] * 0.6), 1, _AA, _SHIFT)
    has_mole, mx, mym, mr = p["mole"]
    if has_mole:
        cv2.circle(img, (_p(CX + fdx + mx * fw), _p(CY + mym * fh)), _p(mr), _col(p["skin"] * 0.4),
                   -1, _AA, _SHIFT)
    g_on, g_round, g_th, g_col, g_size = p["glasses"]
    if g_on:
        gc, th = _col(g_col), max(1, int(round(g_th)))
        for side in (-1, 1):
            ex = CX + fdx + side * p["eye_dx"]
            w, h = p["eye_w"] * g_size, p["eye_w"] * g_size * 0.75
            if g_round:
                cv2.ellipse(img, (_p(ex), _p(ey)), (_p(w), _p(h)), 0, 0, 360, gc, th, _AA, _SHIFT)
            else:
                cv2.rectangle(img, (_p(ex - w), _p(ey - h)), (_p(ex + w), _p(ey + h)), gc, th,
                              _AA, _SHIFT)
            cv2.line(img, (_p(ex + side * w), _p(ey - 2)), (_p(CX + side * fw), _p(ey - 4)), gc, th,
                     _AA, _SHIFT)
        cv2.line(img, (_p(CX + fdx - p["eye_dx"] + p["eye_w"] * g_size), _p(ey - 2)),
                 (_p(CX + fdx + p["eye_dx"] - p["eye_w"] * g_size), _p(ey - 2)), gc, th, _AA, _SHIFT)
    if r.random() < 0.2:                       # an occluder (hand, microphone, shoulder)
        c, (ox, oy) = _col(r.uniform(0, 255, 3)), (CX + u(-1, 1) * fw, CY + u(-0.3, 1) * fh)
        cv2.ellipse(img, (_p(ox), _p(oy)), (_p(u(8, 22)), _p(u(10, 35))), u(0, 180), 0, 360,
                    c, -1, _AA, _SHIFT)
    # pose: in-plane rotation, scale, yaw-like horizontal squash, translation
    a, s = u(-10, 10), u(0.92, 1.08)
    m = cv2.getRotationMatrix2D((CX, CY), a, s)
    m[0] *= 1 - 0.12 * abs(yaw)
    m[0, 2] += CX * 0.12 * abs(yaw) + u(-4, 4) + yaw * 3
    m[1, 2] += u(-4, 4)
    m[:, :2] *= size / 250.0
    m[:, 2] *= size / 250.0
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT101)
    if r.random() < 0.6:                       # camera blur
        img = cv2.GaussianBlur(img, (0, 0), u(0.4, 2.0) * size / 250)
    # lighting: out = img * gain * grad + (offset * grad + noise), per channel; done with
    # cv2's float32 kernels because numpy broadcasting here costs more than the drawing
    ang, ramp = u(0, 2 * np.pi), np.linspace(-1, 1, size, dtype=np.float32)
    g = np.float32(u(0, 0.5))
    grad = 1 + np.add.outer(g * np.float32(np.sin(ang)) * ramp, g * np.float32(np.cos(ang)) * ramp)
    gain = (u(0.7, 1.3) * r.uniform(0.85, 1.15, 3)).astype(np.float32)
    off = 128 * (1 - gain) + np.float32(u(-30, 30))
    mul = cv2.merge([grad * k for k in gain])
    add = cv2.merge([grad * k for k in off])
    n = img.size
    o = r.integers(0, n)                       # sensor noise: a window of a fixed noise bank
    add = cv2.scaleAdd(_noise_bank(n)[o:o + n].reshape(img.shape), float(u(0, 10)), add)
    return cv2.add(cv2.multiply(img, mul, dtype=cv2.CV_32F), add, dtype=cv2.CV_8U)


def _write_identity(out_dir, seed, i, n_images, size, quality):
    """Render and write one identity's images; returns the bytes written."""
    name, nbytes = f"synth{i:05d}", 0
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    p = identity_params(seed, i)
    for j in range(n_images):
        img = render(p, np.random.default_rng([seed, i, 1 + j]), size)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        with open(os.path.join(d, f"{name}_{j + 1:04d}.jpg"), "wb") as fh:
            fh.write(buf.tobytes())
        nbytes += buf.size
    return nbytes


def make_dataset(out_dir, identities, images_per_identity, seed, size=250, progress=True,
                 quality=92, workers=None):
    """Write ``out_dir/synthNNNNN/synthNNNNN_0001.jpg`` ...; returns stats.

    The files depend only on (identities, images_per_identity, seed, size,
    quality), never on `workers`: the same arguments give byte-identical
    files. workers=None uses up to 8 processes for sets of 1000+ images."""
    if identities < 1 or images_per_identity < 1 or size < 32:
        raise ValueError("make_dataset needs identities >= 1, images_per_identity >= 1, size >= 32")
    total = identities * images_per_identity
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if total >= 1000 else 1
    t0, nbytes = time.perf_counter(), 0
    args = [(str(out_dir), seed, i, images_per_identity, size, quality) for i in range(identities)]
    pool = None
    if workers > 1:   # spawn, not fork: forking a process with live thread pools can hang
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_write_identity, *zip(*args), chunksize=4)
    else:
        results = (_write_identity(*a) for a in args)
    bar = Progress(identities, "synth: identities", enabled=progress)
    try:
        for nb in results:
            nbytes += nb
            bar.update(1)
        bar.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return dict(out_dir=str(out_dir), identities=identities, images=total, bytes=nbytes,
                seconds=time.perf_counter() - t0, seed=seed, size=size, workers=workers)
