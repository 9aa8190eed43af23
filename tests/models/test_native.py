"""tokenleap's own int8 kernel (`models/native.py`, `csrc/int8_linear.c`): right, batch- and
thread-invariant, used by quantize where it runs, and a clean fallback to PyTorch's kernel
where it does not (no compiler, a failed build, switched off)."""

import pytest
import torch

from tokenleap.models import kernels, native

needs_native = pytest.mark.skipif(not native.available(), reason=f"the native int8 kernel does not run here: "
                                                                 f"{native.status()}")


def codes_and_scales(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8), torch.rand(n, generator=g) / 100


def test_pack_round_trips():
    codes, _ = codes_and_scales(12, 24)
    packed = native.pack_int8(codes)
    assert packed.shape == (3, 3, 4, 8) and torch.equal(native.unpack_int8(packed), codes)
    # a block of 4 channels is one stream: its first 32 bytes are 8 columns of each channel
    assert torch.equal(packed.reshape(-1)[:32].reshape(4, 8), codes[:4, :8])
    assert native.fits((12, 24)) and not native.fits((10, 24)) and not native.fits((12, 20))


@needs_native
@pytest.mark.parametrize("n,k", [(4, 8), (96, 256), (1152, 576)])
def test_the_kernel_computes_the_product_and_each_row_alone_equals_it_in_a_batch(n, k):
    codes, scales = codes_and_scales(n, k)
    packed = native.pack_int8(codes)
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(1))
    y = native.int8_linear(x, packed, scales)
    exact = (x.double() @ codes.double().t()) * scales.double()
    assert torch.allclose(y.double(), exact, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))
    alone = torch.cat([native.int8_linear(x[i:i + 1], packed, scales) for i in range(9)])
    for m in range(1, 10):  # blocks of 4, 2 and 1 rows: the same bits for every row
        assert torch.equal(native.int8_linear(x[:m], packed, scales), alone[:m])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one thread sums each output exactly as two do
        assert torch.equal(native.int8_linear(x, packed, scales), y)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_quantize_uses_it_where_the_shape_fits_and_the_codes_are_the_same(monkeypatch):
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    fast = kernels.quantize(w, "int8")
    assert fast.native and fast.scales.dtype == torch.float32
    assert not kernels.quantize(w[:90], "int8").native  # 90 channels: not blocks of 4
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    slow = kernels.quantize(w, "int8")
    assert not slow.native and not native.available() and native.DISABLE_ENV in native.status()
    assert torch.equal(native.unpack_int8(fast.data), slow.data)  # the same codes, another layout
    x = torch.randn(5, 256).bfloat16()
    assert torch.allclose(kernels.linear(x, fast).float(), kernels.linear(x, slow).float(), atol=0.02, rtol=0.02)
    assert torch.allclose(fast.dequantize(), slow.dequantize().float(), rtol=0.01, atol=1e-4)


def test_a_failed_build_falls_back_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENLEAP_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")  # a compiler whose every build fails
    native._build.cache_clear()
    try:
        if "build" not in native.status():
            pytest.skip(f"the kernel is ruled out here before any build: {native.status()}")
        assert not native.available() and "the build failed" in native.status()
        w = kernels.quantize(torch.randn(96, 256) * 0.05, "int8")
        assert not w.native and kernels.linear(torch.randn(2, 256).bfloat16(), w).shape == (2, 96)
        assert not list(tmp_path.rglob("*.so"))  # nothing half-built is left to load
    finally:
        native._build.cache_clear()


@needs_native
def test_the_fused_steps_compute_what_the_two_steps_do_and_stay_batch_invariant():
    """RMSNorm then the matmul, and silu(gate) * up then the matmul, in one call each: the same
    numbers as the steps one by one (to float rounding), and each row's bits alone as in a batch."""
    g = torch.Generator().manual_seed(3)
    w = kernels.quantize(torch.randn(96, 64, generator=g) * 0.05, "int8")
    norm_w, eps = torch.rand(64, generator=g) + 0.5, 1e-5

    def rms_norm(x, weight):
        return weight * torch.nn.functional.rms_norm(x, x.shape[-1:], None, eps)

    x = torch.randn(2, 5, 64, generator=g)
    fused = kernels.rms_norm_linear(x, norm_w, eps, w, None, rms_norm)
    assert fused.shape == (2, 5, 96)
    assert torch.allclose(fused, kernels.linear(rms_norm(x, norm_w), w), rtol=1e-5, atol=1e-5)
    gate_up = torch.randn(2, 5, 128, generator=g)
    w_down = kernels.quantize(torch.randn(96, 64, generator=g) * 0.05, "int8")
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(kernels.swiglu_linear(gate_up, w_down),
                          kernels.linear(torch.nn.functional.silu(gate) * up, w_down), rtol=1e-5, atol=1e-5)
    rows = x.reshape(10, 1, 64)
    alone = torch.cat([kernels.rms_norm_linear(rows[i:i + 1], norm_w, eps, w, None, rms_norm) for i in range(10)])
    batch = kernels.rms_norm_linear(rows.reshape(1, 10, 64), norm_w, eps, w, None, rms_norm)
    assert torch.equal(batch.reshape(10, 1, 96), alone)
    gu = gate_up.reshape(10, 128)
    assert torch.equal(kernels.swiglu_linear(gu, w_down),
                       torch.cat([kernels.swiglu_linear(gu[i:i + 1], w_down) for i in range(10)]))
