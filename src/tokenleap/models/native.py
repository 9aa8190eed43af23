"""tokenleap's own CPU kernel for int8 weights (`csrc/int8_linear.c`), built on first use.

On a 2-core AMD EPYC (Zen 4), over the default model's 121 weight matrices in int8 (a decoding
step's matmuls), PyTorch's `_weight_int8pack_mm` takes 10-11 ms for one row; this kernel takes
5.0 ms, the memory bandwidth (135 MB at ~27 GB/s), and 10 ms for 4 rows (PyTorch: 16 ms). Its
outputs are batch- and thread-invariant (see the C file), and it needs AVX2 and FMA only.

It is built with the system's C compiler (`CC`, else `cc` or `gcc`) into the cache home, once
per source and machine, in about a second, and loaded with ctypes. Where it cannot be (not
x86-64 with AVX2 and FMA, no compiler, no OpenMP, a failed build), int8 weights run PyTorch's
kernel as before, and `status()` says why. `TOKENLEAP_NO_NATIVE_KERNELS=1` forces that
fallback, so that the suite tests both paths on any machine.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .hardware import cpu_caps
from .registry import cache_home

DISABLE_ENV = "TOKENLEAP_NO_NATIVE_KERNELS"
SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "int8_linear.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
BLOCK_N, BLOCK_K = 4, 8  # the packed layout's block: 4 output channels x 8 input columns


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and (path := shutil.which(name)):
            return path
    return None


@functools.lru_cache(maxsize=1)
def _build() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, "") or (None, why not). Once per process."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not an x86-64 CPU ({platform.machine()})"
    if not cpu_caps().avx2:
        return None, "the CPU has no AVX2"
    if not (cc := _compiler()):
        return None, "no C compiler (set CC, or install gcc)"
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode() + cc.encode()).hexdigest()[:12]
    lib_path = cache_home() / "native" / f"int8_linear-{digest}.so"
    if not lib_path.is_file():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: a concurrent process never loads half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib_path.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                return None, f"the build failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
            os.replace(tmp, lib_path)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"the build failed: {exc}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(lib_path))  # torch is imported: its OpenMP runtime is the one linked
    except OSError as exc:
        return None, f"cannot load {lib_path.name}: {exc}"
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn, args in ((lib.tokenleap_int8_linear, [ptr] * 4 + [i64] * 3),
                     (lib.tokenleap_int8_rms_norm_linear, [ptr, ptr, ctypes.c_float] + [ptr] * 4 + [i64] * 3),
                     (lib.tokenleap_int8_swiglu_linear, [ptr] * 5 + [i64] * 3)):
        fn.argtypes, fn.restype = args, None
    return lib, ""


def available() -> bool:
    """The native int8 kernel runs here (and is not switched off)."""
    return not disabled() and _build()[0] is not None


def status() -> str:
    """One line for `tokenleap env`: which int8 kernel runs, and why."""
    if disabled():
        return f"PyTorch's ({DISABLE_ENV} set)"
    why = _build()[1]
    return "tokenleap's (AVX2, built here)" if not why else f"PyTorch's (tokenleap's cannot run: {why})"


def fits(shape: tuple[int, int]) -> bool:
    """Whether an [N, K] weight fits the packed layout."""
    return shape[0] % BLOCK_N == 0 and shape[1] % BLOCK_K == 0


def pack_int8(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] int8 codes -> the kernel's layout [N/4, K/8, 4, 8] (each block one stream)."""
    n, k = codes.shape
    return codes.reshape(n // BLOCK_N, BLOCK_N, k // BLOCK_K, BLOCK_K).transpose(1, 2).contiguous()


def unpack_int8(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int8`."""
    blocks, kb, _, _ = packed.shape
    return packed.transpose(1, 2).reshape(blocks * BLOCK_N, kb * BLOCK_K)


def _lib() -> ctypes.CDLL:
    lib = _build()[0]
    assert lib is not None, "a native kernel was called where it is unavailable"
    return lib


def int8_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] (any float dtype) @ the packed int8 weight^T * scales (fp32 [N]) -> fp32 [M, N]."""
    x = x.to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], scales.shape[0])
    _lib().tokenleap_int8_linear(x.data_ptr(), packed.data_ptr(), scales.data_ptr(), y.data_ptr(),
                                 x.shape[0], scales.shape[0], x.shape[1])
    return y


def int8_rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, packed: torch.Tensor,
                         scales: torch.Tensor) -> torch.Tensor:
    """int8_linear(norm_weight * x / sqrt(mean(x^2) + eps)) in one call; x, norm_weight fp32."""
    x, norm_weight = x.to(torch.float32).contiguous(), norm_weight.to(torch.float32).contiguous()
    y, tmp = torch.empty(x.shape[0], scales.shape[0]), torch.empty_like(x)
    _lib().tokenleap_int8_rms_norm_linear(x.data_ptr(), norm_weight.data_ptr(), eps, packed.data_ptr(),
                                          scales.data_ptr(), y.data_ptr(), tmp.data_ptr(),
                                          x.shape[0], scales.shape[0], x.shape[1])
    return y


def int8_swiglu_linear(gate_up: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8_linear(silu(gate) * up) in one call, gate_up [M, 2K] fp32 (gate, then up)."""
    gate_up = gate_up.to(torch.float32).contiguous()
    m, k = gate_up.shape[0], gate_up.shape[1] // 2
    y, tmp = torch.empty(m, scales.shape[0]), torch.empty(m, k)
    _lib().tokenleap_int8_swiglu_linear(gate_up.data_ptr(), packed.data_ptr(), scales.data_ptr(), y.data_ptr(),
                                        tmp.data_ptr(), m, scales.shape[0], k)
    return y
