"""The shapes, values and input makers of the cpu op tests
(backends/test_cpu_ops.py), shared with the gpu op tests
(backends/test_gpu_ops.py), which run the same cases."""
import numpy as np

import oracle as O


def randn(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


CONV = "conv"   # region = (OH, OW): ordinary convolution


LSCONV_CASES = {  # N, C, H, W, K, kh, kw, region
    "conv_3x3": (2, 3, 8, 7, 4, 3, 3, CONV),
    "n1_c1_k1_1x1_local": (1, 1, 5, 5, 1, 1, 1, (1, 1)),
    "ragged_3x2_regions": (3, 2, 9, 6, 5, 3, 2, (3, 2)),     # OH=7, OW=5
    "ragged_5x4_kernel": (2, 4, 11, 9, 3, 5, 4, (3, 4)),     # OH=7, OW=6
    "2x5_kernel": (1, 3, 6, 8, 2, 2, 5, (2, 2)),             # OH=5, OW=4
    "4x1_kernel_local": (2, 1, 7, 7, 3, 4, 1, (1, 1)),
    "region_rows": (3, 2, 6, 6, 2, 2, 2, (1, 5)),            # one region per row
    "kernel_is_input": (5, 2, 4, 4, 3, 4, 4, CONV),          # OH = OW = 1
    "odd_1xN_regions": (1, 5, 5, 9, 7, 1, 3, (2, 3)),
    "deepid2_conv1": (2, 3, 55, 47, 20, 4, 4, CONV),
    "deepid2_conv3": (4, 40, 12, 10, 60, 3, 3, (5, 4)),       # 2x2 grid of regions
    "deepid2_conv4": (4, 60, 5, 4, 80, 2, 2, (1, 1)),         # locally connected
}


LSCONV_POOL_CASES = {  # an LSCONV_CASES case, pool window s
    "conv_3x3_floor": ("conv_3x3", 2),                  # 6x5 output: last column dropped
    "ragged_regions_s3": ("ragged_5x4_kernel", 3),     # regions and windows straddle
    "region_rows": ("region_rows", 2),
    "local_s2": ("4x1_kernel_local", 2),               # locally connected
    "deepid2_conv1": ("deepid2_conv1", 2),
    "deepid2_conv3": ("deepid2_conv3", 2),              # windows across the 5x4 regions
}


def pool_oracle(x, w, b, region, relu, s):
    """(y, argmax) of the composition, and its backward from the pooled gradient."""
    y, am = O.maxpool_forward(O.lsconv_forward(x, w, b, region, relu), s)

    def backward(yp, argmax, dyp):
        out_hw = (x.shape[2] - w.shape[4] + 1, x.shape[3] - w.shape[5] + 1)
        g = np.where(yp > 0, dyp, 0.0) if relu else dyp   # the ReLU mask at the argmax
        dconv = O.maxpool_backward(g, argmax, out_hw)
        return O.lsconv_backward(x, w, dconv, dconv, region, relu=False)
    return y, am, backward


POOL_CASES = {  # N, C, H, W, s
    "even_2": (2, 3, 8, 8, 2),
    "n1_c1_floor": (1, 1, 5, 7, 2),       # last row and 1 column dropped
    "s3_floor": (3, 2, 9, 10, 3),
    "s1_identity": (2, 4, 6, 5, 1),
    "whole_map": (2, 3, 4, 4, 4),
    "deepid2_pool1": (2, 20, 52, 44, 2),
    "deepid2_pool3": (4, 60, 10, 8, 2),
}


POOL_VALUES = ["normal", "ties", "negative"]


def make_pool_input(rng, shape, values):
    if values == "normal":
        return randn(rng, shape)
    if values == "ties":      # few distinct values: many tied maxima
        return rng.integers(-1, 2, shape).astype(np.float32) * 1.5
    return -np.abs(randn(rng, shape)) - 1.0   # all negative


DENSE_CASES = {  # input shapes (N first), M
    "deepid2_fc160": ([(8, 60, 5, 4), (8, 80, 4, 3)], 160),
    "softmax_1000": ([(5, 160)], 1000),
    "n1_m1": ([(1, 7)], 1),
    "three_inputs": ([(3, 3), (3, 1, 2), (3, 4)], 5),
    "odd": ([(7, 13), (7, 2, 3, 1)], 9),
}


def make_dense(case, seed):
    shapes, m = DENSE_CASES[case]
    rng = np.random.default_rng(seed)
    xs = [randn(rng, s) for s in shapes]
    d = sum(int(np.prod(s[1:])) for s in shapes)
    return xs, randn(rng, (d, m)), randn(rng, m), rng, (d, m, shapes[0][0])
