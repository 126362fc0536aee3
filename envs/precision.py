"""Which weights dtype fits this machine: ``dtype: auto``.

bfloat16 halves memory traffic and, where the hardware computes it natively, runs matmuls
several times faster than float32. Where it does not, it is a trap: on an AVX2-only x86 CPU
(most laptops, AMD Zen 3 servers) torch emulates bf16 and a matmul runs ~60x *slower* than
float32 (DESIGN.md, "CPUs differ"). So ``auto`` chooses bf16 only where the device really
computes it fast:

- CUDA: bf16 when the GPU supports it (Ampere and newer), float32 otherwise;
- CPU: bf16 only when the CPU claims native bf16 (``avx512_bf16`` or ``amx_bf16`` in its
  flags) *and* a short matmul probe confirms bf16 is faster than float32 (a flag can be
  present while torch's kernels do not use it, e.g. under ``ATEN_CPU_CAPABILITY=avx2``);
  float32 otherwise.

The decision and its reason travel with the backend (``HFBackend.precision``) into every
run's summary and machine description.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["NATIVE_BF16_FLAGS", "PrecisionChoice", "choose_dtype", "cpu_flags", "matmul_rate",
           "resolve_dtype", "speed_flags"]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must beat float32 by this factor in the probe: a bf16 model also pays casts at the
# float32 LoRA weights, so a marginal win in a bare matmul is no win in training.
PROBE_MARGIN = 1.5


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype ``auto`` chose, and why (written into run summaries)."""

    dtype: str  # "float32" or "bfloat16"
    reason: str
    device: str
    probe: dict[str, float] | None = None  # GFLOP/s per dtype, when a probe ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where there is no such file).

    >>> sorted(cpu_flags("processor : 0\\nflags : fpu avx2 fma\\n"))
    ['avx2', 'fma', 'fpu']
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return None
        try:
            cpuinfo = path.read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return None


def speed_flags() -> list[str]:
    """The CPU flags that decide a timing here (vector width, bf16, AMX, VNNI), in a fixed
    order, for benchmark reports: a figure means little without them."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni",
              "avx_vnni")
    flags = cpu_flags() or frozenset()
    return [f for f in wanted if f in flags]


def matmul_rate(dtype: torch.dtype, *, size: int = 256, seconds: float = 0.03) -> float:
    """GFLOP/s of a ``size``-square matmul in ``dtype`` on the CPU, timed for ~``seconds``.

    One warm-up call, then repeats until ``seconds`` pass (at least one timed call), so an
    emulated bf16 path (~1 GFLOP/s) costs a few tens of milliseconds, not more.
    """
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    calls = 0
    start = time.perf_counter()
    while True:
        a @ b
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return 2 * size**3 * calls / elapsed / 1e9


def choose_dtype(
    device: str,
    *,
    flags: frozenset[str] | None = None,
    cuda_bf16: bool | None = None,
    probe: dict[str, float] | None = None,
) -> PrecisionChoice:
    """Decide bf16 or float32 for ``device`` from what the hardware says (pure logic).

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        flags: the CPU's feature flags (None: unknown, e.g. not Linux).
        cuda_bf16: whether the GPU supports bf16 (CUDA only).
        probe: measured GFLOP/s ``{"float32": ..., "bfloat16": ...}``; for a CPU that
            claims native bf16 (or whose flags are unknown) the decision needs it.

    >>> choose_dtype("cpu", flags=frozenset({"avx2", "fma"})).dtype
    'float32'
    >>> choose_dtype("cpu", flags=frozenset({"avx512_bf16"}),
    ...              probe={"float32": 120.0, "bfloat16": 500.0}).dtype
    'bfloat16'
    >>> choose_dtype("cpu", flags=frozenset({"amx_bf16"}),
    ...              probe={"float32": 60.0, "bfloat16": 1.5}).dtype  # emulated kernels
    'float32'
    >>> choose_dtype("cuda", cuda_bf16=True).dtype
    'bfloat16'
    """
    if device.startswith("cuda"):
        if cuda_bf16:
            return PrecisionChoice("bfloat16", "CUDA GPU with native bfloat16", device)
        return PrecisionChoice("float32", "CUDA GPU without bfloat16 support", device)
    if device != "cpu":
        return PrecisionChoice("float32", f"device {device!r}: float32 is the safe default",
                               device)
    native = None if flags is None else any(f in flags for f in NATIVE_BF16_FLAGS)
    if native is False:
        return PrecisionChoice(
            "float32",
            "CPU without native bfloat16 (no avx512_bf16/amx_bf16 flag): bf16 matmuls are"
            " emulated there, tens of times slower than float32",
            device,
        )
    if probe is None:
        raise ValueError("a CPU that may compute bf16 natively needs a probe to decide")
    ratio = probe["bfloat16"] / max(probe["float32"], 1e-9)
    claim = "CPU flags claim native bfloat16" if native else "CPU flags unknown"
    if ratio >= PROBE_MARGIN:
        return PrecisionChoice("bfloat16", f"{claim}; probe: bf16 matmul {ratio:.1f}x float32",
                               device, probe)
    return PrecisionChoice(
        "float32",
        f"{claim}, but the probe measured bf16 matmuls at {ratio:.2f}x float32 (needs"
        f" >= {PROBE_MARGIN}x): torch does not use native bf16 kernels here",
        device,
        probe,
    )


@functools.lru_cache(maxsize=8)
def _auto(device: str) -> PrecisionChoice:
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        with torch.cuda.device(index):
            return choose_dtype(device, cuda_bf16=torch.cuda.is_bf16_supported())
    if device != "cpu":
        return choose_dtype(device)
    flags = cpu_flags()
    if flags is not None and not any(f in flags for f in NATIVE_BF16_FLAGS):
        return choose_dtype(device, flags=flags)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-core rate; other processes may share the cores
    try:
        probe = {"float32": matmul_rate(torch.float32), "bfloat16": matmul_rate(torch.bfloat16)}
    finally:
        torch.set_num_threads(threads)
    return choose_dtype(device, flags=flags, probe=probe)


def resolve_dtype(dtype: str, device: str) -> PrecisionChoice:
    """Turn a config's ``dtype`` into a concrete one: ``auto`` decides, others pass through.

    An explicit ``bfloat16`` on a CPU without native bf16 is kept (the user asked for it)
    but its reason says it will be slow.
    """
    if dtype == "auto":
        return _auto(device)
    reason = "set in the config"
    if dtype == "bfloat16" and device == "cpu":
        flags = cpu_flags()
        if flags is not None and not any(f in flags for f in NATIVE_BF16_FLAGS):
            reason += (" (warning: this CPU has no native bfloat16, so bf16 matmuls are"
                       " emulated and very slow; use dtype: auto or float32)")
    return PrecisionChoice(dtype, reason, device)


def machine_precision() -> dict[str, Any]:
    """What ``auto`` chooses on this machine's CPU, with the CPU's identity, for reports."""
    flags = cpu_flags() or frozenset()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": sorted(f for f in NATIVE_BF16_FLAGS if f in flags),
        "auto_dtype_cpu": _auto("cpu").to_dict(),
    }
