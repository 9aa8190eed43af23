"""What this machine can compute, and the device and dtype a load resolves to.

CPUs differ in what they compute natively: bf16 arithmetic needs AVX-512-bf16 or AMX, and
oneDNN's packed bf16 kernels need AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT. Everything that
depends on the CPU asks `cpu_caps()` instead of assuming the machine it was written on.

`TOKENLEAP_NO_NATIVE_BF16=1` makes this machine look like one without native bf16 (as an
AVX2-only CPU): `auto` picks fp32 and no bf16 oneDNN kernel is used. The test suite uses it
to run the fallback path on AVX-512 machines too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import TokenleapError

log = logging.getLogger("tokenleap")

FORCE_FALLBACK_ENV = "TOKENLEAP_NO_NATIVE_BF16"
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
          "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


@dataclass(frozen=True)
class CpuCaps:
    """The CPU features our kernels depend on, read once per process (and per override)."""

    model: str  # the CPU's model name (/proc/cpuinfo)
    isa: str  # the vector ISA torch dispatches to: "AVX512", "AVX2", "DEFAULT", ...
    avx2: bool
    avx512: bool
    avx512_bf16: bool
    amx: bool
    onednn: bool  # oneDNN is built in (packed fp32 weights work wherever it is)
    onednn_bf16: bool  # oneDNN's bf16 kernels run here (packing bf16 weights needs them)
    native_bf16: bool  # bf16 is computed natively, so it is the fast exact choice
    forced_fallback: bool  # TOKENLEAP_NO_NATIVE_BF16 set: bf16 features reported absent

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    with contextlib.suppress(Exception):
        return bool(check()) if check else False
    return False


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor string elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=2)  # keyed by the override's value: one entry per setting
def _detect(forced: bool) -> CpuCaps:
    onednn = torch.backends.mkldnn.is_available()
    onednn_bf16 = False
    if onednn:
        with contextlib.suppress(Exception):
            onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    avx512_bf16, amx = _flag("_is_avx512_bf16_supported"), _flag("_is_amx_tile_supported")
    native = (avx512_bf16 or amx) and onednn_bf16
    if forced:
        avx512_bf16 = amx = native = onednn_bf16 = False
    return CpuCaps(model=cpu_model(), isa=torch.backends.cpu.get_cpu_capability(),
                   avx2=_flag("_is_avx2_supported"), avx512=_flag("_is_avx512_supported"),
                   avx512_bf16=avx512_bf16, amx=amx, onednn=onednn, onednn_bf16=onednn_bf16,
                   native_bf16=native, forced_fallback=forced)


def forced_fallback() -> bool:
    return os.environ.get(FORCE_FALLBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cpu_caps() -> CpuCaps:
    """This CPU's capabilities (detected once; TOKENLEAP_NO_NATIVE_BF16 honoured)."""
    return _detect(forced_fallback())


# ---- device ------------------------------------------------------------------------------

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """auto -> the first of cuda, mps, cpu that is available; an explicit device must exist."""
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if not _DEVICE.match(name):
        raise TokenleapError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise TokenleapError(f"device {name!r} requested but no CUDA device is available "
                                 f"(torch {torch.__version__}, {build}); use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise TokenleapError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA "
                                 f"device(s) exist")
        return torch.device(name)
    if name == "mps" and not _mps_available():
        raise TokenleapError("device 'mps' requested but the Metal backend is not available here")
    return torch.device(name)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


# ---- dtype -------------------------------------------------------------------------------

def auto_dtype(device: torch.device) -> torch.dtype:
    """The fastest dtype that this hardware computes natively: bf16 on CPUs with native bf16,
    fp32 on other CPUs (emulated bf16 is several times slower); bf16 (else fp16) on CUDA; fp16 on MPS."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_caps().native_bf16 else torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' (or None) -> `auto_dtype`; a name or torch dtype -> itself. An explicit bf16 on a
    CPU without native bf16 still runs (emulated, slowly) and says so once per load."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return auto_dtype(device)
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    else:
        try:
            chosen = DTYPES[str(dtype).strip().lower()]
        except KeyError:
            raise TokenleapError(f"unknown dtype {dtype!r}; use auto, bf16, fp32 or fp16") from None
    if chosen not in DTYPE_NAMES:
        raise TokenleapError(f"unsupported dtype {chosen}; use auto, bf16, fp32 or fp16")
    if device.type == "cpu" and chosen == torch.bfloat16 and not cpu_caps().native_bf16:
        log.warning("note: this CPU (%s) has no native bf16; bf16 runs emulated, several times slower "
                    "than fp32 (dtype 'auto' picks fp32 here)", cpu_caps().isa)
    return chosen


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def one_intra_op_thread() -> None:
    """A worker thread's initializer: its ops run on one intra-op thread (PPD's two workers, the
    cost model's one-thread measurement). Initialises the thread's pool now, so that a caller
    restoring its own thread count afterwards is not overridden."""
    torch.set_num_threads(1)
    torch.get_num_threads()


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so a timer around it measures the work itself."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
