"""The cascade's patch geometry (face.landmark_cascade): patches on a ramp image,
frame offsets and the mirror round trip."""

import numpy as np

from deepid2_core.face import landmark_cascade as FC


def ramp_image(h=60, w=80):
    """I(x, y) = x + 2 y: bilinear sampling of it is exact inside the image."""
    y, x = np.mgrid[0:h, 0:w]
    return (x + 2 * y).astype(np.uint8)


def test_patch_geometry_on_a_ramp():
    img = ramp_image()
    images, hw = img[None], np.array([img.shape])
    centre = np.array([[30.0, 20.0], [40.5, 25.25]])
    angle = np.array([0.0, np.pi / 2])  # the second patch's x axis points down the image
    x, y = FC.patch_grid(centre, angle, np.array([10.0, 5.0]), 5)
    assert x.shape == (2, 5, 5)
    assert np.allclose([x[0, 2, 2], y[0, 2, 2]], centre[0])   # odd size: centre pixel
    assert np.allclose(np.diff(x[0], axis=1), 2.0) and np.allclose(np.diff(y[0], axis=0), 2.0)
    assert np.allclose(x[0, 0, 0], 26.0) and np.allclose(y[0, 0, 0], 16.0)
    assert np.allclose(np.diff(y[1], axis=1), 1.0) and np.allclose(np.diff(x[1], axis=0), -1.0)
    p = FC.sample_patches(images, hw, np.zeros(2, int), x, y)
    assert np.allclose(p, x + 2 * y, atol=1e-4)
    # border replicated: far outside, the nearest edge pixel's value
    p = FC.sample_patches(images, hw, np.zeros(1, int), np.array([[[-5.0, 100.0]]]),
                         np.array([[[3.0, 70.0]]]))
    assert np.allclose(p, [[[0 + 2 * 3, 79 + 2 * 59]]])
    # flip: the coordinates are those of the mirror image
    xm, ym = FC.patch_grid([[20.0, 30.0]], [0.3], [12.0], 7)
    a = FC.sample_patches(images, hw, [0], xm, ym, flip=[True])
    b = FC.sample_patches(np.ascontiguousarray(img[:, ::-1])[None], hw, [0], xm, ym)
    assert np.allclose(a, b, atol=1e-4)


def test_frame_offsets_and_mirror_round_trip():
    pts = np.array([[[30, 34], [50, 30], [40, 44], [33, 54], [47, 52]]], float)
    a, r = FC.shape_frame(pts)
    assert np.allclose(a, np.arctan2(-4, 20))
    assert np.allclose(r, np.sqrt(np.mean(np.sum((pts[0] - pts[0].mean(0)) ** 2, 1))))
    assert np.allclose(FC.shape_frame(pts, rotate_frame=False)[0], 0)
    assert FC.shape_frame(np.ones((1, 5, 2)))[1][0] == FC.MIN_RADIUS  # degenerate: a floor
    truth = pts + np.random.default_rng(0).normal(0, 2, pts.shape)
    side = np.array([[12.0, 15.0]])
    off = FC.points_to_offsets(pts, a, side, truth)
    assert off.shape == (1, 5, 2, 2)
    assert np.allclose(FC.offsets_to_points(pts, a, side, off), truth[:, :, None])
    m = FC.mirror_points(pts, 80)
    assert np.allclose(m[0, 0], [79 - 50, 30]) and np.allclose(m[0, 3], [79 - 47, 52])
    assert np.allclose(FC.mirror_points(m, 80), pts)
