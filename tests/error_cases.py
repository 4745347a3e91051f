"""The bad-argument cases of the cpu backend's error tests
(backends/test_cpu_errors.py): valid calls, and each case breaking one
argument; shared with the gpu error tests (backends/test_gpu_errors.py)."""
import numpy as np


f32, i32 = np.float32, np.int32


def arr(*shape, dtype=f32):
    """Nonzero values, C-contiguous."""
    return (np.arange(np.prod(shape), dtype=np.float64).reshape(shape) % 7 + 1).astype(dtype)


def strided(a):
    """Same shape and dtype as a, not C-contiguous (every other element of the last axis)."""
    big = np.repeat(a, 2, axis=-1)
    out = big[..., ::2]
    assert out.shape == a.shape and not out.flags.c_contiguous
    return out


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def valid():
    """Valid keyword arguments for every op."""
    # lsconv: N=2, C=3, 8x7 input, K=4, 3x2 kernel -> 6x6 output, 3x3 regions -> 2x2 grid
    x, w, b = arr(2, 3, 8, 7), arr(2, 2, 4, 3, 3, 2), arr(2, 2, 4)
    y = arr(2, 4, 6, 6)
    xs, dw_ = [arr(2, 3, 2), arr(2, 4)], arr(10, 5)
    # 2x2 pooling of 8x7: the top-left element of every window
    corner = np.arange(4)[:, None] * 2 * 7 + np.arange(3)[None, :] * 2
    pool_argmax = np.ascontiguousarray(np.broadcast_to(corner, (2, 3, 4, 3)), dtype=i32)
    # ... and of the lsconv's 6x6 output
    corner = np.arange(3)[:, None] * 2 * 6 + np.arange(3)[None, :] * 2
    conv_argmax = np.ascontiguousarray(np.broadcast_to(corner, (2, 4, 3, 3)), dtype=i32)
    return {
        "lsconv_forward": dict(x=x, w=w, b=b, region=(3, 3)),
        "lsconv_backward": dict(x=x, w=w, y=y, dy=arr(2, 4, 6, 6), region=(3, 3),
                                dw=arr(2, 2, 4, 3, 3, 2), db=arr(2, 2, 4)),
        "lsconv_pool_forward": dict(x=x, w=w, b=b, region=(3, 3), s=2),
        "lsconv_pool_backward": dict(x=x, w=w, y=arr(2, 4, 3, 3), argmax=conv_argmax,
                                     dy=arr(2, 4, 3, 3), region=(3, 3), dw=arr(2, 2, 4, 3, 3, 2),
                                     db=arr(2, 2, 4), s=2),
        "maxpool_forward": dict(x=arr(2, 3, 8, 7), s=2),
        "maxpool_backward": dict(dy=arr(2, 3, 4, 3), argmax=pool_argmax, in_hw=(8, 7)),
        "dense_forward": dict(xs=xs, w=dw_, b=arr(5)),
        "dense_backward": dict(xs=xs, w=dw_, y=arr(2, 5), dy=arr(2, 5), dw=arr(10, 5), db=arr(5)),
        "joint_loss": dict(logits=arr(4, 6), labels=i32([0, 5, 2, 1]), features=arr(4, 3),
                           pair_a=i32([0, 1, 3]), pair_b=i32([1, 2, 3]), pair_y=i32([1, -1, 1]),
                           variant="l2", lam=0.05, params=f32([1.0])),
        "sgd_update": dict(param=arr(5, 4), grad=arr(5, 4), velocity=arr(5, 4), lr=0.1),
    }


T, V = TypeError, ValueError


CASES = {
    # ---- lsconv_forward
    "lsf_x_float64": ("lsconv_forward", {"x": lambda a: a.astype(np.float64)}, T, r"\bx\b"),
    "lsf_x_int": ("lsconv_forward", {"x": lambda a: a.astype(i32)}, T, r"\bx\b"),
    "lsf_x_list": ("lsconv_forward", {"x": lambda a: a.tolist()}, T, r"\bx\b"),
    "lsf_w_float64": ("lsconv_forward", {"w": lambda a: a.astype(np.float64)}, T, r"\bw\b"),
    "lsf_b_float64": ("lsconv_forward", {"b": lambda a: a.astype(np.float64)}, T, r"\bb\b"),
    "lsf_x_3d": ("lsconv_forward", {"x": lambda a: a[0].copy()}, V, r"\bx\b"),
    "lsf_w_5d": ("lsconv_forward", {"w": lambda a: a[0].copy()}, V, r"\bw\b"),
    "lsf_w_channels": ("lsconv_forward", {"w": lambda a: arr(2, 2, 4, 2, 3, 2)}, V, r"\b(w|x)\b"),
    "lsf_b_shape": ("lsconv_forward", {"b": lambda a: arr(2, 2, 5)}, V, r"\bb\b"),
    "lsf_b_flat": ("lsconv_forward", {"b": lambda a: a.ravel().copy()}, V, r"\bb\b"),
    "lsf_region_grid": ("lsconv_forward", {"region": lambda r: (2, 2)}, V, r"\b(w|region)\b"),
    "lsf_region_zero": ("lsconv_forward", {"region": lambda r: (0, 3)}, V, r"\bregion\b"),
    "lsf_region_negative": ("lsconv_forward", {"region": lambda r: (3, -1)}, V, r"\bregion\b"),
    "lsf_kernel_too_big": ("lsconv_forward", {"x": lambda a: arr(2, 3, 2, 7)}, V,
                           r"kernel|\b(w|x)\b"),
    "lsf_x_strided": ("lsconv_forward", {"x": strided}, V, r"\bx\b"),
    "lsf_x_fortran": ("lsconv_forward", {"x": np.asfortranarray}, V, r"\bx\b"),
    "lsf_w_strided": ("lsconv_forward", {"w": strided}, V, r"\bw\b"),
    "lsf_b_strided": ("lsconv_forward", {"b": strided}, V, r"\bb\b"),
    # ---- lsconv_backward
    "lsb_dy_shape": ("lsconv_backward", {"dy": lambda a: arr(2, 4, 6, 5)}, V, r"\bdy\b"),
    "lsb_dy_float64": ("lsconv_backward", {"dy": lambda a: a.astype(np.float64)}, T, r"\bdy\b"),
    "lsb_dy_strided": ("lsconv_backward", {"dy": strided}, V, r"\bdy\b"),
    "lsb_y_shape": ("lsconv_backward", {"y": lambda a: arr(2, 4, 6, 5)}, V, r"\by\b"),
    "lsb_y_float64": ("lsconv_backward", {"y": lambda a: a.astype(np.float64)}, T, r"\by\b"),
    "lsb_dw_shape": ("lsconv_backward", {"dw": lambda a: arr(1, 2, 4, 3, 3, 2)}, V, r"\bdw\b"),
    "lsb_dw_float64": ("lsconv_backward", {"dw": lambda a: a.astype(np.float64)}, T, r"\bdw\b"),
    "lsb_dw_strided": ("lsconv_backward", {"dw": strided}, V, r"\bdw\b"),
    "lsb_dw_readonly": ("lsconv_backward", {"dw": readonly}, V, r"\bdw\b"),
    "lsb_db_shape": ("lsconv_backward", {"db": lambda a: arr(2, 2, 3)}, V, r"\bdb\b"),
    "lsb_x_float64": ("lsconv_backward", {"x": lambda a: a.astype(np.float64)}, T, r"\bx\b"),
    "lsb_w_channels": ("lsconv_backward", {"w": lambda a: arr(2, 2, 4, 2, 3, 2)}, V,
                       r"\b(w|x)\b"),
    # ---- lsconv_pool_forward / lsconv_pool_backward
    "lspf_s_zero": ("lsconv_pool_forward", {"s": lambda s: 0}, V, r"\bs\b"),
    "lspf_s_too_big": ("lsconv_pool_forward", {"s": lambda s: 7}, V, r"\b(s|x)\b"),
    "lspf_b_shape": ("lsconv_pool_forward", {"b": lambda a: arr(2, 2, 5)}, V, r"\bb\b"),
    "lspb_s_too_big": ("lsconv_pool_backward", {"s": lambda s: 7}, V, r"\bs\b"),
    "lspb_dy_shape": ("lsconv_pool_backward", {"dy": lambda a: arr(2, 4, 3, 2)}, V, r"\bdy\b"),
    "lspb_dy_float64": ("lsconv_pool_backward", {"dy": lambda a: a.astype(np.float64)}, T,
                        r"\bdy\b"),
    "lspb_y_shape": ("lsconv_pool_backward", {"y": lambda a: arr(2, 4, 3, 2)}, V, r"\by\b"),
    "lspb_argmax_int64": ("lsconv_pool_backward", {"argmax": lambda a: a.astype(np.int64)}, T,
                          r"\bargmax\b"),
    "lspb_argmax_shape": ("lsconv_pool_backward", {"argmax": lambda a: a[:, :, :2].copy()}, V,
                          r"\bargmax\b"),
    "lspb_argmax_strided": ("lsconv_pool_backward", {"argmax": strided}, V, r"\bargmax\b"),
    "lspb_argmax_other_window": ("lsconv_pool_backward", {"argmax": lambda a: a + 2}, V,
                                 r"\bargmax\b"),
    "lspb_argmax_negative": ("lsconv_pool_backward", {"argmax": lambda a: a - 1}, V,
                             r"\bargmax\b"),
    "lspb_dw_shape": ("lsconv_pool_backward", {"dw": lambda a: arr(1, 2, 4, 3, 3, 2)}, V,
                      r"\bdw\b"),
    "lspb_dw_readonly": ("lsconv_pool_backward", {"dw": readonly}, V, r"\bdw\b"),
    # ---- maxpool
    "mpf_x_float64": ("maxpool_forward", {"x": lambda a: a.astype(np.float64)}, T, r"\bx\b"),
    "mpf_x_3d": ("maxpool_forward", {"x": lambda a: a[0].copy()}, V, r"\bx\b"),
    "mpf_x_strided": ("maxpool_forward", {"x": strided}, V, r"\bx\b"),
    "mpf_s_zero": ("maxpool_forward", {"s": lambda s: 0}, V, r"\bs\b"),
    "mpf_s_too_big": ("maxpool_forward", {"s": lambda s: 9}, V, r"\b(x|s)\b"),
    "mpb_argmax_int64": ("maxpool_backward", {"argmax": lambda a: a.astype(np.int64)}, T,
                         r"\bargmax\b"),
    "mpb_argmax_float": ("maxpool_backward", {"argmax": lambda a: a.astype(f32)}, T,
                         r"\bargmax\b"),
    "mpb_argmax_shape": ("maxpool_backward", {"argmax": lambda a: a[:, :, :3].copy()}, V,
                         r"\bargmax\b"),
    "mpb_argmax_strided": ("maxpool_backward", {"argmax": strided}, V, r"\bargmax\b"),
    "mpb_argmax_outside_plane": ("maxpool_backward", {"argmax": lambda a: a + 10 ** 6}, V,
                                 r"\bargmax\b"),
    "mpb_argmax_negative": ("maxpool_backward", {"argmax": lambda a: a - 1}, V, r"\bargmax\b"),
    "mpb_argmax_other_window": ("maxpool_backward", {"argmax": lambda a: a + 7 * 4}, V,
                                r"\bargmax\b"),
    "mpb_dy_float64": ("maxpool_backward", {"dy": lambda a: a.astype(np.float64)}, T, r"\bdy\b"),
    "mpb_dy_3d": ("maxpool_backward", {"dy": lambda a: a[0].copy()}, V, r"\bdy\b"),
    "mpb_in_hw_too_small": ("maxpool_backward", {"in_hw": lambda t: (2, 2)}, V,
                            r"\b(in_hw|dy)\b"),
    "mpb_in_hw_zero": ("maxpool_backward", {"in_hw": lambda t: (0, 7)}, V, r"\bin_hw\b"),
    # ---- dense
    "df_xs_float64": ("dense_forward", {"xs": lambda l: [l[0], l[1].astype(np.float64)]}, T,
                      r"\bxs\b"),
    "df_xs_rows": ("dense_forward", {"xs": lambda l: [l[0], arr(3, 4)]}, V, r"\bxs\b"),
    "df_xs_empty": ("dense_forward", {"xs": lambda l: []}, V, r"\bxs\b"),
    "df_xs_1d": ("dense_forward", {"xs": lambda l: [arr(10)]}, V, r"\bxs\b"),
    "df_xs_strided": ("dense_forward", {"xs": lambda l: [l[0], strided(l[1])]}, V, r"\bxs\b"),
    "df_w_rows": ("dense_forward", {"w": lambda a: arr(9, 5)}, V, r"\b(w|xs)\b"),
    "df_w_1d": ("dense_forward", {"w": lambda a: a.ravel().copy()}, V, r"\bw\b"),
    "df_w_float64": ("dense_forward", {"w": lambda a: a.astype(np.float64)}, T, r"\bw\b"),
    "df_b_shape": ("dense_forward", {"b": lambda a: arr(6)}, V, r"\bb\b"),
    "df_b_2d": ("dense_forward", {"b": lambda a: arr(1, 5)}, V, r"\bb\b"),
    "db_dy_shape": ("dense_backward", {"dy": lambda a: arr(2, 4)}, V, r"\bdy\b"),
    "db_y_shape": ("dense_backward", {"y": lambda a: arr(3, 5)}, V, r"\by\b"),
    "db_dw_shape": ("dense_backward", {"dw": lambda a: arr(5, 10)}, V, r"\bdw\b"),
    "db_dw_float64": ("dense_backward", {"dw": lambda a: a.astype(np.float64)}, T, r"\bdw\b"),
    "db_db_shape": ("dense_backward", {"db": lambda a: arr(4)}, V, r"\bdb\b"),
    "db_db_readonly": ("dense_backward", {"db": readonly}, V, r"\bdb\b"),
    # ---- joint_loss
    "jl_logits_float64": ("joint_loss", {"logits": lambda a: a.astype(np.float64)}, T,
                          r"\blogits\b"),
    "jl_logits_1d": ("joint_loss", {"logits": lambda a: a.ravel().copy()}, V, r"\blogits\b"),
    "jl_logits_strided": ("joint_loss", {"logits": strided}, V, r"\blogits\b"),
    "jl_labels_int64": ("joint_loss", {"labels": lambda a: a.astype(np.int64)}, T, r"\blabels\b"),
    "jl_labels_float": ("joint_loss", {"labels": lambda a: a.astype(f32)}, T, r"\blabels\b"),
    "jl_labels_length": ("joint_loss", {"labels": lambda a: a[:3].copy()}, V, r"\blabels\b"),
    "jl_labels_too_big": ("joint_loss", {"labels": lambda a: i32([0, 6, 2, 1])}, V,
                          r"\blabels\b"),
    "jl_labels_negative": ("joint_loss", {"labels": lambda a: i32([0, 5, -1, 1])}, V,
                           r"\blabels\b"),
    "jl_features_float64": ("joint_loss", {"features": lambda a: a.astype(np.float64)}, T,
                            r"\bfeatures\b"),
    "jl_features_rows": ("joint_loss", {"features": lambda a: arr(5, 3)}, V, r"\bfeatures\b"),
    "jl_features_strided": ("joint_loss", {"features": strided}, V, r"\bfeatures\b"),
    "jl_pair_a_range": ("joint_loss", {"pair_a": lambda a: i32([0, 4, 3])}, V, r"\bpair_a\b"),
    "jl_pair_a_negative": ("joint_loss", {"pair_a": lambda a: i32([0, -1, 3])}, V,
                           r"\bpair_a\b"),
    "jl_pair_b_range": ("joint_loss", {"pair_b": lambda a: i32([1, 2, 4])}, V, r"\bpair_b\b"),
    "jl_pair_b_length": ("joint_loss", {"pair_b": lambda a: i32([1, 2])}, V, r"\bpair_b\b"),
    "jl_pair_a_int64": ("joint_loss", {"pair_a": lambda a: a.astype(np.int64)}, T,
                        r"\bpair_a\b"),
    "jl_pair_y_zero": ("joint_loss", {"pair_y": lambda a: i32([1, 0, 1])}, V, r"\bpair_y\b"),
    "jl_pair_y_two": ("joint_loss", {"pair_y": lambda a: i32([1, -1, 2])}, V, r"\bpair_y\b"),
    "jl_pair_y_length": ("joint_loss", {"pair_y": lambda a: i32([1, -1, 1, 1])}, V,
                         r"\bpair_y\b"),
    "jl_pair_y_float": ("joint_loss", {"pair_y": lambda a: a.astype(f32)}, T, r"\bpair_y\b"),
    "jl_params_length_l2": ("joint_loss", {"params": lambda a: f32([1.0, 0.0])}, V,
                            r"\bparams\b"),
    "jl_params_length_cosine": ("joint_loss", {"variant": lambda v: "cosine"}, V, r"\bparams\b"),
    "jl_params_float64": ("joint_loss", {"params": lambda a: a.astype(np.float64)}, T,
                          r"\bparams\b"),
    "jl_variant_unknown": ("joint_loss", {"variant": lambda v: "l3"}, V, r"\bvariant\b"),
    "jl_variant_case": ("joint_loss", {"variant": lambda v: "L2"}, V, r"\bvariant\b"),
    # ---- sgd_update
    "sgd_grad_shape": ("sgd_update", {"grad": lambda a: arr(4, 5)}, V, r"\bgrad\b"),
    "sgd_velocity_shape": ("sgd_update", {"velocity": lambda a: arr(20)}, V, r"\bvelocity\b"),
    "sgd_param_float64": ("sgd_update", {"param": lambda a: a.astype(np.float64)}, T,
                          r"\bparam\b"),
    "sgd_grad_float64": ("sgd_update", {"grad": lambda a: a.astype(np.float64)}, T, r"\bgrad\b"),
    "sgd_param_strided": ("sgd_update", {"param": strided}, V, r"\bparam\b"),
    "sgd_velocity_strided": ("sgd_update", {"velocity": strided}, V, r"\bvelocity\b"),
    "sgd_param_readonly": ("sgd_update", {"param": readonly}, V, r"\bparam\b"),
}
