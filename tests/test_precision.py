"""``dtype: auto`` (issue 11): bf16 only where the device computes it natively.

The decision logic is tested for both kinds of CPU whatever CPU runs the test; the probe
and the backend are tested on this machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from selfedit.envs.precision import (
    PrecisionChoice,
    choose_dtype,
    cpu_flags,
    matmul_rate,
    resolve_dtype,
)

AVX2_ONLY = frozenset("fpu sse2 avx avx2 fma f16c bmi2".split())  # AMD Zen 3, most laptops
NATIVE_BF16 = frozenset("avx2 avx512f avx512_bf16 amx_bf16 amx_tile".split())  # Sapphire Rapids

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_avx2_only_cpu_gets_float32_without_a_probe() -> None:
    choice = choose_dtype("cpu", flags=AVX2_ONLY)
    assert choice.dtype == "float32"
    assert "no avx512_bf16/amx_bf16" in choice.reason
    assert choice.probe is None  # the flags alone decide: no time spent probing


def test_native_bf16_cpu_gets_bf16_when_the_probe_confirms_it() -> None:
    choice = choose_dtype("cpu", flags=NATIVE_BF16, probe={"float32": 126.0, "bfloat16": 530.0})
    assert choice.dtype == "bfloat16"
    assert "4.2x" in choice.reason


def test_flag_without_fast_kernels_falls_back_to_float32() -> None:
    """The flag is there but torch runs emulated kernels (e.g. ATEN_CPU_CAPABILITY=avx2)."""
    choice = choose_dtype("cpu", flags=NATIVE_BF16, probe={"float32": 62.0, "bfloat16": 1.6})
    assert choice.dtype == "float32"
    assert "probe" in choice.reason


def test_marginal_bf16_win_is_not_enough() -> None:
    choice = choose_dtype("cpu", flags=NATIVE_BF16, probe={"float32": 100.0, "bfloat16": 120.0})
    assert choice.dtype == "float32"


def test_unknown_flags_are_decided_by_the_probe_alone() -> None:
    with pytest.raises(ValueError, match="probe"):
        choose_dtype("cpu", flags=None)
    fast = choose_dtype("cpu", flags=None, probe={"float32": 50.0, "bfloat16": 200.0})
    assert fast.dtype == "bfloat16" and "unknown" in fast.reason


@pytest.mark.parametrize(("bf16", "want"), [(True, "bfloat16"), (False, "float32")])
def test_cuda_follows_the_gpu(bf16: bool, want: str) -> None:
    assert choose_dtype("cuda:0", cuda_bf16=bf16).dtype == want


def test_cpu_flags_parse_x86_and_missing() -> None:
    assert "avx512_bf16" in cpu_flags("processor: 0\nflags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert cpu_flags("processor: 0\nmodel name: something\n") is None


def test_probe_measures_both_dtypes_quickly() -> None:
    rate32 = matmul_rate(torch.float32, size=64, seconds=0.005)
    rate16 = matmul_rate(torch.bfloat16, size=64, seconds=0.005)
    assert rate32 > 0 and rate16 > 0


def test_auto_resolves_on_this_machine_with_a_reason() -> None:
    choice = resolve_dtype("auto", "cpu")
    assert isinstance(choice, PrecisionChoice)
    assert choice.dtype in ("float32", "bfloat16") and choice.reason
    flags = cpu_flags()
    if flags is not None and not ({"avx512_bf16", "amx_bf16"} & flags):
        assert choice.dtype == "float32"
    assert resolve_dtype("float32", "cpu").dtype == "float32"


def test_backend_loads_with_auto_and_reports_the_choice(tiny_model_dir) -> None:
    from selfedit.envs.backend import HFBackend

    backend = HFBackend(str(tiny_model_dir), dtype="auto", device="cpu")
    assert backend.precision.dtype in ("float32", "bfloat16")
    want = {"float32": torch.float32, "bfloat16": torch.bfloat16}[backend.precision.dtype]
    assert next(backend.model.parameters()).dtype == want


def test_no_shipped_config_hard_codes_a_cpu_slow_dtype() -> None:
    """A config that says bfloat16 takes hours on an AVX2-only CPU (issue 11)."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        env = (yaml.safe_load(path.read_text()) or {}).get("env") or {}
        assert env.get("dtype", "auto") == "auto", f"{path.name} sets env.dtype={env['dtype']}"
