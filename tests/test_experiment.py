"""The experiment layer: one config base, one loader, and every config mistake as one line
before anything is written (issue 14; issue 13, items 4 and 5). No model is loaded here."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.training.benchmark import BenchmarkConfig
from selfedit.training.cli import main
from selfedit.training.config import RunConfig
from selfedit.training.continual import ContinualConfig
from selfedit.training.experiment import (
    MAX_CONFIG_NODES,
    ExperimentConfig,
    apply_overrides,
    load_experiment,
)
from selfedit.training.grpo import GRPORunConfig
from selfedit.training.policy_config import PolicyRunConfig, load_train_config
from selfedit.training.restem import RestemConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [RunConfig, RestemConfig, GRPORunConfig, ContinualConfig, BenchmarkConfig]


# -- one base ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CONFIGS)
def test_every_runner_config_extends_the_base(cls: type) -> None:
    assert issubclass(cls, ExperimentConfig)
    base = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert base <= {f.name for f in dataclasses.fields(cls)}
    # Every field has help text, inherited where a subclass only changes a default.
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    cfg = cls()
    assert list(cfg.to_dict())[-1] == "env"  # sections last, as in the YAML files
    assert all(isinstance(v, (bool, int, float, str)) for v in cfg.hparams().values())


def test_subclasses_change_defaults_not_help() -> None:
    restem = {f.name: f for f in dataclasses.fields(RestemConfig)}
    grpo = {f.name: f for f in dataclasses.fields(GRPORunConfig)}
    assert restem["name"].default == "restem" and grpo["name"].default == "grpo"
    assert restem["name"].metadata["help"] == grpo["name"].metadata["help"]
    assert RestemConfig().algorithm == "restem" and GRPORunConfig().algorithm == "grpo"


def test_algorithm_picks_the_class(tmp_path) -> None:
    assert isinstance(load_train_config(REPO / "configs" / "grpo_cpu.yaml"), GRPORunConfig)
    assert isinstance(load_experiment(PolicyRunConfig, None, ["heldout_passages=4:8"]),
                      RestemConfig)
    with pytest.raises(ConfigError, match="algorithm must be one of restem, grpo"):
        load_experiment(PolicyRunConfig, None, ["algorithm=ppo"])


def test_overrides_keep_their_syntax() -> None:
    raw = apply_overrides({"env": {"passages": "0:8"}},
                          ["env.passages=20:30", "seeds=3", "agents=[passage, no_training]",
                           "env.judge_model=", "executor.batch=2"])
    assert raw == {"env": {"passages": "20:30", "judge_model": None}, "seeds": 3,
                   "agents": ["passage", "no_training"], "executor": {"batch": 2}}
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["seeds"])
    with pytest.raises(ConfigError, match="empty part"):
        apply_overrides({}, ["env..passages=1"])


# -- names become paths (item 4) -----------------------------------------------------------
BAD_NAMES = ["../up", "/etc/x", "a/b", ".hidden", "-flag", "x" * 101, "a\x00b", "", "two words",
             "back\\slash"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_run_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="name must be a plain name for file paths"):
        RunConfig(name=name)


@pytest.mark.parametrize("name", ["../up", "/abs", "a\x00b", ".x", "y" * 200])
def test_unsafe_agent_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"agents\[1\]\.name must be a plain name"):
        RunConfig(agents=["passage", {"type": "fixed", "baseline": "passage", "name": name}])


def test_names_never_write_outside_output_dir(tmp_path, capsys) -> None:
    out = tmp_path / "runs" / "out"
    escaped = f"escaped-{tmp_path.name}"
    for override in (f"name=../{escaped}", f"name={tmp_path}/{escaped}",
                     'agents=[{name: "../x", baseline: passage}]', 'name="a\x00b"'):
        _cli_error(["run", f"output_dir={out}", override], capsys)
    assert list(tmp_path.iterdir()) == []  # nothing anywhere: not even output_dir


# -- config mistakes (item 5) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ({"a": 1}, "agents must be list"),
        ([["passage", "rewrite"]], r"agents\[0\]: an agent entry must be a baseline name"),
        ([{1: "passage"}], r"agents\[0\]: agent keys must be text"),
        ([{"baseline": ["passage"]}], r"agents\[0\]\.baseline must be one baseline name"),
        ([{"baseline": "passage", "hyperparameters": [1]}],
         r"agents\[0\]\.hyperparameters must be a mapping"),
        ([{"template": "List facts."}], r"agents\[0\]\.template must be a mapping"),
        ([{"type": ["ucb1"]}], r"agents\[0\]: unknown agent type"),
        (["passage", "passage"], "agent names must be unique"),
        ([], "agents must be a non-empty list"),
    ],
)
def test_agent_entries_of_the_wrong_shape(agents, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"agents": agents})


@pytest.mark.parametrize("seed", [-1, 2**31, 10**30])
def test_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ConfigError, match="seed must be a whole number from 0 to"):
        RunConfig(seed=seed)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"invalid_reward": 0.0}, "invalid_reward must be a finite number below 0"),
        ({"invalid_reward": 0.5}, "invalid_reward must be a finite number below 0"),
        ({"invalid_reward": float("nan")}, "invalid_reward must be a finite number below 0"),
        ({"invalid_reward": float("-inf")}, "invalid_reward must be a finite number below 0"),
        ({"judge": "ftp://example.com/v1"}, "judge must be 'local' or an http"),
        ({"judge": "https:///v1"}, "judge must be 'local' or an http"),
        ({"judge": "api.openai.com/v1"}, "judge must be 'local' or an http"),
        ({"judge": "http://host:99999/v1"}, "judge must be 'local' or an http"),
    ],
)
def test_env_values_that_would_fail_mid_run(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EnvConfig(**env)


def test_baseline_cache_that_is_a_file(tmp_path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    with pytest.raises(ConfigError, match="baseline_cache .* is not a directory path"):
        EnvConfig(baseline_cache=str(tmp_path / "cache"))
    assert EnvConfig(baseline_cache=str(tmp_path / "new-dir")).baseline_cache  # made later


def _cli_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfedit: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-3", "seed must be a whole number from 0"),
        ("env.invalid_reward=0.2", "invalid_reward must be a finite number below 0"),
        ("env.judge=file:///etc/passwd", "judge must be 'local' or an http"),
        ("agents=[[passage]]", "agents[0]: an agent entry must be"),
        ("report_to=[mlflow]", "report_to: unknown tracker"),
        ('env.corpus="x\\0y"', "env.corpus contains a NUL byte"),  # YAML's escape for NUL
        ('env.corpus="x\x00y"', "unacceptable character #x0000"),  # a raw NUL: not YAML
    ],
)
def test_cli_config_mistakes_start_nothing(tmp_path, capsys, override: str, message: str) -> None:
    out = tmp_path / "out"
    err = _cli_error(["run", "--config", str(REPO / "configs" / "baselines_cpu.yaml"),
                      f"output_dir={out}", override], capsys)
    assert message in err
    assert not out.exists()


def test_output_dir_that_cannot_hold_runs(tiny_model_dir, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        err = _cli_error(["run", f"output_dir={out}", "agents=[no_training]",
                          f"env.model={tiny_model_dir}", "env.passages=0:1"], capsys)
        assert f"output_dir: {blocker} is a file, not a directory" in err
    assert blocker.read_text() == "x" and list(tmp_path.iterdir()) == [blocker]


def test_unwritable_output_dir_is_one_line() -> None:
    """A directory nobody may create entries in (sysfs refuses even root)."""
    from selfedit.training.rundir import RunDir

    probe = Path("/sys/selfedit-probe")
    try:
        probe.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a machine where /sys is writable
        probe.rmdir()
        pytest.skip("/sys is writable here")
    with pytest.raises(ConfigError, match="output_dir: cannot create .*choose a writable"):
        RunDir.create(RunConfig(output_dir="/sys/selfedit-runs"))


def test_report_to_wandb_without_the_package(tmp_path) -> None:
    import importlib.util

    from selfedit.training.rundir import RunDir

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    cfg = RunConfig(output_dir=str(tmp_path / "out"), report_to="wandb")
    assert cfg.report_to == ["wandb"]  # TRL's spelling accepted
    with pytest.raises(ConfigError, match="needs the wandb package: pip install wandb"):
        RunDir.create(cfg)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="set tensorboard: true"):
        RunConfig(report_to=["wandb"], tensorboard=False)


# -- files ----------------------------------------------------------------------------------
def test_empty_config_file_starts_nothing(tmp_path, capsys) -> None:
    for text in ("", "# only a comment\n", "\n\n"):
        config = tmp_path / "c.yaml"
        config.write_text(text)
        err = _cli_error(["run", "--config", str(config), f"output_dir={tmp_path / 'out'}"],
                         capsys)
        assert "is empty" in err
    assert not (tmp_path / "out").exists()


def test_run_without_a_config_asks_for_one(capsys) -> None:
    err = _cli_error(["run"], capsys)
    assert "needs a config" in err and "configs/baselines_cpu.yaml" in err
    err = _cli_error(["continual"], capsys)
    assert "needs a config" in err


def test_resume_of_a_missing_or_foreign_directory(tmp_path, capsys) -> None:
    missing = tmp_path / "nope"
    for command in ("run", "train"):
        err = _cli_error([command, "--resume", str(missing)], capsys)
        assert err == f"selfedit: error: --resume {missing}: no such directory"
    (tmp_path / "plain").mkdir()
    err = _cli_error(["run", "--resume", str(tmp_path / "plain")], capsys)
    assert "not a run directory (it holds no config.yaml)" in err
    err = _cli_error(["benchmark", "--resume", str(tmp_path / "plain")], capsys)
    assert "not a benchmark directory (it holds no benchmark.yaml)" in err


def test_huge_and_odd_config_files(tmp_path, capsys) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 200_000)
    assert "a config is at most" in _cli_error(["run", "--config", str(big)], capsys)
    assert "is a directory" in _cli_error(["run", "--config", str(tmp_path)], capsys)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    assert "is not UTF-8 text" in _cli_error(["run", "--config", str(binary)], capsys)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert "must hold a mapping" in _cli_error(["run", "--config", str(listing)], capsys)


def _laughs(levels: int, width: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_that_explode_are_refused(tmp_path, capsys) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(9))  # ~800 bytes that describe 9**9 = 387 million strings
    assert bomb.stat().st_size < 1000
    t0 = time.perf_counter()
    err = _cli_error(["run", "--config", str(bomb)], capsys)
    assert time.perf_counter() - t0 < 5
    assert "aliases (*name) expand to" in err and f"{MAX_CONFIG_NODES:,}" in err
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [*a]\n")
    assert "recursive alias" in _cli_error(["run", "--config", str(loop)], capsys)
    # Through an override value too.
    flat = _laughs(9).replace("\n", ", ").rstrip(", ")
    err = _cli_error(["run", "agents=[passage]", "env={" + flat + "}"], capsys)
    assert "expand to" in err


def test_modest_aliases_still_load(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("agents: [&p {type: fixed, baseline: passage, name: a}, "
                      "{<<: *p, name: b}]\nenv: {passages: '0:2'}\n")
    cfg = load_experiment(RunConfig, config)
    assert cfg.agents == [{"type": "fixed", "baseline": "passage", "name": "a"},
                          {"type": "fixed", "baseline": "passage", "name": "b"}]


def test_retired_keys_of_old_run_directories() -> None:
    # Committed run directories were written when env.archive_show existed (0 = off).
    cfg = load_experiment(RunConfig, None, ["env.archive_show=0", "agents=[passage]"])
    assert cfg.agents == ["passage"]
    with pytest.raises(ConfigError, match="archive_show was removed"):
        load_experiment(RunConfig, None, ["env.archive_show=3"])


def test_committed_results_still_load() -> None:
    from selfedit.training.run import load_run_config

    for run_dir in sorted((REPO / "results").glob("*__*")):
        config = (run_dir / "config.yaml").read_text()
        if "algorithm:" in config:
            load_train_config(run_dir / "config.yaml")
        elif "agents:" in config:
            load_run_config(run_dir)
    for bench in ("benchmark_cpu", "benchmark_cpu_squad"):
        load_experiment(BenchmarkConfig, REPO / "results" / bench / "benchmark.yaml")
