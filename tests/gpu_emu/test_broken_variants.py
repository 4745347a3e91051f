"""The variant checks can fail: each variant, broken on purpose, fails the
very test that passes it when it is right.
- one wrong output element (or hyperparameter) after a kernel runs, through
  a wrapped launcher: on a GPU ("cuda") and in the emulator ("emu");
- TF32 operands truncated instead of rounded to nearest (the emulator built
  with -DEMU_TF32_TRUNCATE: what a kernel that skipped cvt.rna would get),
  which only the sharp check (the oracle on TF32-rounded inputs) can see."""
import numpy as np
import pytest

import test_fused_pool as FP
import test_sgd_multi as SGD
import test_tc_variants as TC
from gpu_support import MODES
from tc_support import variant_modes


@pytest.fixture(params=MODES)
def gpu(request):
    with variant_modes(request.param) as g:
        yield g


def nudge_first(a):
    a.reshape(-1)[:1] += np.float32(1e-2)   # on the device: no host read


def break_after(monkeypatch, be, prefix, arg, change=nudge_first):
    """Every launch of a kernel named prefix* changes its argument `arg` afterwards."""
    launch = be.KIT.launch

    def broken(file, kname, grid, block, args, shared_mem=0):
        launch(file, kname, grid, block, args, shared_mem)
        if kname.startswith(prefix):
            change(args[arg])
    monkeypatch.setattr(be.KIT, "launch", broken)


BROKEN = {  # kernel, argument it writes, the test that checks it, its arguments
    "tf32_forward": ("lsconv_tc_fwd_", 4, TC.test_tf32_forward, ("deepid2_conv3", True)),
    "tf32_input_grad": ("lsconv_col2im", 1, TC.test_tf32_backward, ("deepid2_conv4", True, True)),
    "tf32_weight_grad": ("lsconv_tc_bwd_w_", 4, TC.test_tf32_backward,
                         ("deepid2_conv2", False, True)),
    "fused_pool_forward": ("lsconv_pool_fwd", 5, FP.test_fused_equals_the_composition,
                           ("deepid2_conv3", True)),
    "fused_pool_weight_grad": ("lsconv_bwd_w_pooled_", 5, FP.test_fused_equals_the_composition,
                               ("regions_straddled", False)),
}


@pytest.mark.parametrize("variant", BROKEN)
def test_a_wrong_element_fails_the_check(gpu, monkeypatch, variant):
    prefix, arg, test, args = BROKEN[variant]
    test(gpu, *args)    # right: passes
    break_after(monkeypatch, gpu.be, prefix, arg)
    with pytest.raises(AssertionError):
        test(gpu, *args)


def test_a_wrong_sgd_hyperparameter_fails_the_bit_check(gpu, monkeypatch):
    launch = gpu.be.KIT.launch

    def broken(file, kname, grid, block, args, shared_mem=0):
        if kname == "sgd_update_multi":   # lr, momentum, decay 1e-4 off
            args = (args[0], args[1] * np.float32(1.0001), *args[2:])
        launch(file, kname, grid, block, args, shared_mem)
    monkeypatch.setattr(gpu.be.KIT, "launch", broken)
    with pytest.raises(AssertionError):
        SGD.test_one_launch_gives_the_per_tensor_bits(gpu)


def test_truncated_tf32_operands_fail_the_sharp_check(gpu, monkeypatch):
    if gpu.mode != "emu":
        pytest.skip("a kernel build with another rounding is the emulator's")
    monkeypatch.setenv("DEEPID2_EMU_CXXFLAGS", "-DEMU_TF32_TRUNCATE")
    monkeypatch.setattr(gpu.be.KIT, "modules", {})    # rebuild the kernels with the flag
    with pytest.raises(AssertionError, match="TF32-rounded oracle"):
        TC.test_tf32_forward(gpu, "deepid2_conv3", True)
