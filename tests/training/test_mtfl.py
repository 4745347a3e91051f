"""MTFL reading and its cache (training.mtfl)."""

import os

import numpy as np
import pytest

from deepid2_core.nets import landmark as NL
from deepid2_core.face import landmarks as FL
from deepid2_core.training import mtfl as TM
from mtfl_synth import tiny_mtfl

DATA = os.path.join(os.environ.get("DEEPID2_DATA", os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data")), "mtfl80")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, TM.TEST_LIST)),
                                reason=f"MTFL data not found at {DATA} (set DEEPID2_DATA)")


def test_cache_of_an_mtfl_folder(tmp_path):
    root = tiny_mtfl(tmp_path / "mtfl")
    cache = TM.build_cache(root, TM.TRAIN_LIST, tmp_path / "cache", NL.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: None)
    assert len(cache) == 11 and cache.meta["dropped_bad"] == "1"
    assert cache.ctx.dtype == np.uint8 and cache.ctx.shape == (11, TM.CONTEXT, TM.CONTEXT)
    assert cache.crop.shape == (11, 39, 39) and not cache.found.any() and cache.box_ok.all()
    files = os.listdir(tmp_path / "cache")
    again = TM.build_cache(root, TM.TRAIN_LIST, tmp_path / "cache", NL.LandmarkNetConfig(),
                          "central", progress=False, log=lambda *a: pytest.fail("rebuilt"))
    assert os.listdir(tmp_path / "cache") == files and np.array_equal(again.ctx, cache.ctx)
    # the crop's own points map back onto the image's
    m = FL.invert_affine(cache.crop_inv[3])
    assert np.allclose(FL.apply_affine(cache.crop_inv[3], FL.apply_affine(m, cache.points[3])),
                       cache.points[3])
    with pytest.raises(ValueError, match="not found"):
        TM.read_mtfl(tmp_path, TM.TRAIN_LIST)


@needs_data
def test_mtfl_reader_and_the_misannotated_lines():
    rows = TM.read_mtfl(DATA, TM.TRAIN_LIST)
    assert len(rows) == 10000 and rows[0][1].shape == (5, 2)
    bad = [r for r, p in rows if TM.known_bad_annotation(r, p, (80, 80))]
    assert len(bad) == 2347 and all(r.startswith("net_7876/") for r in bad)
