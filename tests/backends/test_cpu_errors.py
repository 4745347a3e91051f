"""Error paths of the cpu backend: TypeError for a wrong dtype, ValueError for
a wrong shape / layout / value, each naming the offending argument. Every
case starts from a valid call (test_valid_calls) and breaks one argument."""
import numpy as np
import pytest
from error_cases import CASES, arr, f32, i32, valid

def test_cpu_backend_loads():
    from deepid2_core.backends import get_backend  # must not raise
    assert get_backend("cpu").name == "cpu"


def test_valid_calls(be):
    for op, kw in valid().items():
        getattr(be, op)(**kw)
    kw = valid()["joint_loss"]
    be.joint_loss(**dict(kw, variant="cosine", params=f32([1.0, 0.0])))


# (op, argument -> function of the valid value giving the bad one, error, regex)
@pytest.mark.parametrize("case", CASES)
def test_error(be, case):
    op, changes, exc, pattern = CASES[case]
    kw = valid()[op]
    for name, make_bad in changes.items():
        kw[name] = make_bad(kw[name])
    with pytest.raises(exc, match=pattern):
        getattr(be, op)(**kw)


def test_failed_calls_leave_outputs_untouched(be):
    """Arguments are checked before any memory is written."""
    kw = valid()["lsconv_backward"]
    dw0, db0 = kw["dw"].copy(), kw["db"].copy()
    with pytest.raises(ValueError, match=r"\bdy\b"):
        be.lsconv_backward(**dict(kw, dy=arr(2, 4, 5, 6)))
    np.testing.assert_array_equal(kw["dw"], dw0)
    np.testing.assert_array_equal(kw["db"], db0)
    kw = valid()["lsconv_pool_backward"]   # an argmax off its window is found mid-way
    dw0, db0 = kw["dw"].copy(), kw["db"].copy()
    bad = kw["argmax"].copy()
    bad[1, 3, 2, 2] += 2
    with pytest.raises(ValueError, match=r"\bargmax\b"):
        be.lsconv_pool_backward(**dict(kw, argmax=bad))
    np.testing.assert_array_equal(kw["dw"], dw0)
    np.testing.assert_array_equal(kw["db"], db0)
    kw = valid()["sgd_update"]
    p0, v0 = kw["param"].copy(), kw["velocity"].copy()
    with pytest.raises(ValueError, match=r"\bgrad\b"):
        be.sgd_update(**dict(kw, grad=arr(4, 5)))
    np.testing.assert_array_equal(kw["param"], p0)
    np.testing.assert_array_equal(kw["velocity"], v0)


def test_message_states_expected_shape(be):
    kw = valid()["lsconv_forward"]
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):   # b's expected shape
        be.lsconv_forward(**dict(kw, b=arr(2, 2, 5)))


def test_empty_dimensions_are_rejected(be):
    """Zero-size batches / maps / inputs raise ValueError (never crash)."""
    kw = valid()
    bad_calls = [
        ("lsconv_forward", dict(kw["lsconv_forward"], x=arr(0, 3, 8, 7))),
        ("lsconv_forward", dict(kw["lsconv_forward"], w=arr(2, 2, 0, 3, 3, 2), b=arr(2, 2, 0))),
        ("maxpool_forward", dict(kw["maxpool_forward"], x=arr(0, 3, 8, 7))),
        ("dense_forward", dict(kw["dense_forward"], xs=[arr(2, 0)], w=arr(0, 5))),
        ("joint_loss", dict(kw["joint_loss"], logits=arr(0, 6), labels=i32([]),
                            features=arr(0, 3), pair_a=i32([]), pair_b=i32([]),
                            pair_y=i32([]))),
    ]
    for op, args in bad_calls:
        with pytest.raises(ValueError):
            getattr(be, op)(**args)
