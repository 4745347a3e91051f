"""Plots (issue 15, point 9): labelled axes with tick labels (units in the
labels), and the legend outside the axes, so it never covers a curve."""

import cv2
import numpy as np
import pytest

from deepid2_core.plot import nice_ticks, tick_label
from deepid2_core.training.deepid2 import CURVES
from deepid2_core.training.landmarks import CURVES as LANDMARK_CURVES
from deepid2_core.training.loop import draw_curves
from deepid2_core.verifier.metrics import roc_curve
from deepid2_core.verifier.roc_plot import plot_roc

PANELS = [(90, 40, 330, 290), (560, 40, 330, 290)]  # x0, y0, w, h of plot.two_panels


def history(n):
    return [dict(epoch=i + 1, loss=3 * 0.9 ** i, ident=2 * 0.9 ** i, verif=0.5 * 0.95 ** i,
                 train_acc=1 - 0.9 ** i, val_acc=0.9 - 0.9 ** i) for i in range(n)]


def dark(img):
    return img.min(axis=2) < 128


def test_nice_ticks_cover_the_range_in_round_steps():
    ticks, step = nice_ticks(0.13, 4.71)
    assert step == 1 and ticks == [1, 2, 3, 4]
    ticks, step = nice_ticks(-12.0, 97.0)
    assert step == 25 and ticks == [0, 25, 50, 75]
    assert [tick_label(v, 0.05) for v in (0.1, 0.15)] == ["0.10", "0.15"]
    assert [tick_label(v, 0.25) for v in (0.0, 0.25)] == ["0.00", "0.25"]
    assert [tick_label(v, 2.5) for v in (5.0, 7.5)] == ["5.0", "7.5"]
    assert tick_label(40.0, 20) == "40"


@pytest.mark.parametrize("n", [1, 2, 30, 120])
def test_training_curves_have_labelled_axes_and_the_legend_below(tmp_path, n):
    draw_curves(tmp_path / "curves.png", CURVES, history(n))
    img = cv2.imread(str(tmp_path / "curves.png"))
    assert img.shape == (420, 920, 3)
    for x0, y0, w, h in PANELS:
        below, left = dark(img[y0 + h + 3:y0 + h + 45, x0:x0 + w]), dark(img[y0:y0 + h, :x0 - 2])
        assert below[:20].sum() > 10   # x tick labels (one epoch: the one label "1")
        assert below[25:].sum() > 40   # the x label
        assert left[:, -40:].sum() > 40 and left[:, :-45].sum() > 80  # y ticks, the y label
        legend = img[y0 + h + 46:, x0:x0 + w]
        assert (np.abs(legend.astype(int) - (200, 80, 30)).max(axis=2) < 40).any()  # swatch


def test_the_legend_never_draws_inside_the_axes(tmp_path):
    from deepid2_core import plot
    names = [np.full((420, 920, 3), 255, np.uint8) for _ in range(2)]
    for img, label in zip(names, ("a", "a much longer legend entry that would cover it")):
        plot.panel(img, 90, 40, 330, 290, "t", [(label, [1, 3, 2]), (label, [2, 2, 1])])
    x0, y0, w, h = PANELS[0]
    inside = (slice(y0, y0 + h + 1), slice(x0, x0 + w + 1))
    assert np.array_equal(names[0][inside], names[1][inside])
    assert not np.array_equal(names[0], names[1])


def test_landmark_curves_are_labelled_too(tmp_path):
    draw_curves(tmp_path / "c.png", LANDMARK_CURVES,
                [dict(loss=1 / (i + 1), val_nme=0.1 / (i + 1)) for i in range(5)])
    img = cv2.imread(str(tmp_path / "c.png"))
    x0, y0, w, h = PANELS[1]
    assert dark(img[y0 + h + 3:y0 + h + 45, x0:x0 + w]).sum() > 60


def test_roc_plot_has_labelled_axes_and_the_legend_below(tmp_path):
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    s = rng.normal(0, 1, 1000) + 2 * same
    plot_roc(tmp_path / "roc.png", {"jb": roc_curve(s, same), "l2": roc_curve(-s, same)})
    img = cv2.imread(str(tmp_path / "roc.png"))
    x0, y0, w, h = 90, 40, 520, 400
    assert img.shape[0] > y0 + h + 60
    below, left = dark(img[y0 + h + 3:y0 + h + 45, x0:x0 + w]), dark(img[y0:y0 + h, :x0 - 2])
    assert below[:20].sum() > 40 and below[25:].sum() > 60 and left.sum() > 150
    legend = img[y0 + h + 46:, x0:x0 + w]
    assert (np.abs(legend.astype(int) - (200, 80, 30)).max(axis=2) < 40).any()


def test_the_verification_loss_says_it_is_unweighted():
    # issue 25: verif (up to ~10) drawn above the total (~0.5) read as a bug
    names = dict(CURVES[0][1])   # the loss panel's legend -> metric
    verif = next(n for n in names if n.startswith("verification loss"))
    assert "unweighted" in verif and "lambda x it" in verif
    assert names[verif] == "verif"
    assert any("lambda x verif" in n for n in names if n.startswith("total"))
