"""The README stays true: its commands are the ones CI runs, its config reference is complete."""

from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path

from selfedit.envs.config import EnvConfig
from selfedit.training.config import ExecutorConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    out = subprocess.run(
        ["bash", "-c", "source <(sed -n '/^readme_command()/,/^}/p' .ci/run); "
         "readme_command test-command"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out.endswith("python -m pytest")
    assert out in README
    assert "pip install torch==2.13.0" in out


def test_main_command_uses_a_config_that_exists() -> None:
    assert "selfedit run --config configs/baselines_cpu.yaml" in README
    assert (REPO / "configs" / "baselines_cpu.yaml").is_file()


def test_config_reference_lists_every_key() -> None:
    sections = {"env": EnvConfig, "executor": ExecutorConfig}
    for f in fields(RunConfig):
        if f.name not in sections:
            assert f"| `{f.name}` |" in README, f.name
    for section, cls in sections.items():
        for f in fields(cls):
            assert f"| `{section}.{f.name}` |" in README, f"{section}.{f.name}"


def test_every_shipped_config_validates() -> None:
    """Each config in configs/ loads with the loader of the command its header names."""
    from selfedit.envs.arc_survey import load_survey_config
    from selfedit.training.benchmark import load_benchmark_config
    from selfedit.training.config import load_config
    from selfedit.training.continual import load_continual_config
    from selfedit.training.restem import load_train_config

    loaders = {"benchmark": load_benchmark_config, "restem": load_train_config,
               "grpo": load_train_config, "continual": load_continual_config,
               "arc": load_survey_config}
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        loaders.get(path.stem.split("_")[0], load_config)(path)
