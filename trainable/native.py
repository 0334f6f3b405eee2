"""The batch pipeline's C kernel (augment_kernel.c): built on first use with the system's C
compiler, for the CPU it runs on, and cached; absent where no compiler works, and then the
batch form runs as torch operations.

Each call runs every step of a pipeline on one image at a time, so an image stays in the
core's cache from the first step to the last instead of every step streaming the whole batch
through memory. The parameters come from the same draws as the torch form's.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("augment_kernel.c")
# -march=native: the library is built on, and for, the machine that runs it (hence the CPU in
# the cache key). No -ffast-math: the arithmetic stays the torch form's, up to rounding.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC")

log = logging.getLogger(__name__)


class Op(enum.IntEnum):
    """The kernel's steps: the codes of the enum in augment_kernel.c, which lists each one's
    parameters per image."""

    CROP = 1
    HFLIP = 2
    VFLIP = 3
    WARP = 4
    BLUR = 5
    SHARPEN = 6
    CONTRAST = 7
    BRIGHTNESS = 8
    COLOR = 9
    GRAY = 10
    ERASE = 11


def _cpu() -> str:
    """What -march=native compiles for: the CPU model and its instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tune-search"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside its final name and moved into place: trials starting together may build at once
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm"], check=True, capture_output=True, text=True)
        os.replace(built, target)


@functools.cache  # once per process
def library() -> ctypes.CDLL | None:
    """The kernel, built if this CPU has no cached build yet; None (and one warning) where that
    fails: no compiler, or it refuses the source."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc) found: batch augmentation runs as torch operations, ~3-5x slower on CPUs")
        return None
    key = hashlib.sha256("\0".join((SOURCE.read_text(), *FLAGS, compiler, _cpu())).encode()).hexdigest()[:16]
    target = cache_dir() / f"augment-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        log.warning("could not build the augmentation kernel (%s): batch augmentation runs as torch operations", detail)
        return None
    pointer, integers = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
    lib.augment.argtypes = [pointer, pointer, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, integers, integers, ctypes.POINTER(pointer)]
    lib.augment.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


@functools.cache
def _workers(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="augment")


def augment(images: torch.Tensor, ops: list[tuple[Op, torch.Tensor]]) -> torch.Tensor:
    """uint8 images (B, 3, H, W) on the CPU through the steps `ops`, each a kernel op code and
    its (B, k) parameter rows; float pixel values 0-255 out, channels-last. Split over
    torch's thread count (ctypes releases the GIL for the call)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the augmentation kernel is not available on this machine")
    images = images.contiguous()
    n, channels, height, width = images.shape
    if channels != 3 or images.dtype != torch.uint8:
        raise ValueError(f"the kernel takes uint8 RGB batches (B, 3, H, W); got {images.dtype} {tuple(images.shape)}")
    out = torch.empty(n, height, width, 3)
    params = [p.to(torch.float32).contiguous() for _, p in ops]
    k = len(ops)
    codes = (ctypes.c_int * k)(*(code for code, _ in ops))
    strides = (ctypes.c_int * k)(*(p.shape[1] for p in params))

    def run(start: int, stop: int) -> int:
        rows = (ctypes.c_void_p * k)(*(p.data_ptr() + start * p.stride(0) * p.element_size() for p in params))
        first = images.data_ptr() + start * images.stride(0)
        return lib.augment(first, out.data_ptr() + start * out.stride(0) * out.element_size(), stop - start, height, width, k, codes, strides, rows)

    threads = min(torch.get_num_threads(), n)
    if threads > 1:
        bounds = [n * i // threads for i in range(threads + 1)]
        codes_back = list(_workers(threads).map(run, bounds[:-1], bounds[1:]))
    else:
        codes_back = [run(0, n)]
    if any(codes_back):
        raise MemoryError("the augmentation kernel could not allocate its per-image buffers")
    return out.permute(0, 3, 1, 2)
