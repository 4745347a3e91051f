"""The float64 oracle behind the backend interface, so the network itself
(deepid2_core.nets.deepid2) can run on it: whole-network gradient checks in float64,
and cpu-vs-oracle checks of the whole network."""

from types import SimpleNamespace

import numpy as np

import oracle as O

name = "oracle"


def lsconv_forward(x, w, b, region, relu=True):
    return O.lsconv_forward(x, w, b, region, relu)


def lsconv_backward(x, w, y, dy, region, relu=True, need_dx=True, dw=None, db=None):
    dx, gw, gb = O.lsconv_backward(x, w, y, dy, region, relu)
    return (dx if need_dx else None), _acc(dw, gw), _acc(db, gb)


def lsconv_pool_forward(x, w, b, region, relu=True, s=2):
    return O.maxpool_forward(O.lsconv_forward(x, w, b, region, relu), s)


def lsconv_pool_backward(x, w, y, argmax, dy, region, relu=True, need_dx=True, dw=None, db=None,
                         s=2):
    out_hw = (x.shape[2] - w.shape[4] + 1, x.shape[3] - w.shape[5] + 1)
    if relu:  # the unpooled output's ReLU mask, where the scatter puts anything
        dy = np.where(y > 0, dy, 0.0)
    dconv = O.maxpool_backward(dy, argmax, out_hw)
    return lsconv_backward(x, w, dconv, dconv, region, relu=False, need_dx=need_dx, dw=dw, db=db)


def maxpool_forward(x, s=2):
    return O.maxpool_forward(x, s)


def maxpool_backward(dy, argmax, in_hw, s=None):
    return O.maxpool_backward(dy, argmax, in_hw)


def dense_forward(xs, w, b, relu=True):
    return O.dense_forward(xs, w, b, relu)


def dense_backward(xs, w, y, dy, relu=True, need_dx=True, dw=None, db=None):
    dxs, gw, gb = O.dense_backward(xs, w, y, dy, relu)
    return (dxs if need_dx else None), _acc(dw, gw), _acc(db, gb)


def joint_loss(*args, **kw):
    return SimpleNamespace(**O.joint_loss(*args, **kw))


def _acc(dst, g):
    if dst is None:
        return g
    dst += g
    return dst
