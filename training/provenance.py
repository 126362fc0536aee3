"""Where and how a run ran: the command line, package versions, the machine.

Every run directory records one *session* per start or resume (:class:`~selfedit.training
.rundir.RunDir` appends it to ``environment.json``), and reports quote it, so a number can be
traced to the code, packages and hardware that produced it.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["command_line", "machine_description", "package_versions", "session"]

_PACKAGES = [("selfedit", "selfedit-gym"), ("torch", "torch"),
             ("transformers", "transformers"), ("peft", "peft"), ("trl", "trl"),
             ("gymnasium", "gymnasium"), ("numpy", "numpy"), ("matplotlib", "matplotlib")]


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again: ``selfedit`` and the arguments, quoted."""
    return shlex.join(["selfedit", *(sys.argv[1:] if argv is None else argv)])


def package_versions() -> dict[str, str]:
    """Versions of the packages results depend on, Python's, and the git commit if any."""
    return dict(_package_versions())


@lru_cache(maxsize=1)  # asked for once per run directory; git and metadata do not change
def _package_versions() -> dict[str, str]:
    out = {}
    for label, dist in _PACKAGES:
        try:
            out[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[label] = "not installed"
    out["python"] = platform.python_version()
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True)
        out["commit"] = commit.stdout.strip() + (" (with local changes)" if dirty.stdout.strip()
                                                 else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_description() -> dict[str, Any]:
    """The machine: Python, platform, CPU model and count, memory, torch and its threads,
    the GPU if any, and what ``dtype: auto`` chooses here (``precision``, issue 11)."""
    import torch

    from selfedit.envs.precision import machine_precision

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "precision": machine_precision(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    cpu = _cpu_model()
    if cpu:
        out["cpu"] = cpu
    try:
        out["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def session(command: str) -> dict[str, Any]:
    """One start (or resume) of a run: the command, when, the versions and the machine."""
    import datetime as dt

    return {
        "command": command,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": package_versions(),
        "machine": machine_description(),
    }
