"""The CLI end to end on a tiny model: JSONL, TensorBoard, table, resume, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfedit.training.cli import main
from selfedit.training.runlog import read_steps

REPO = Path(__file__).resolve().parents[1]


def _args(tiny_model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--config", str(REPO / "configs" / "baselines_cpu.yaml"),
        f"env.model={tiny_model_dir}", "env.dtype=float32", "env.passages=0:2",
        "env.completion_max_tokens=12", "env.answer_max_tokens=6", "env.baseline_cache=null",
        "agents=[implications, passage, no_training]", f"output_dir={out}", "progress=false",
        *extra,
    ]


def _run_dir(out: Path) -> Path:
    (run_dir,) = list(out.iterdir())
    return run_dir


def test_run_writes_jsonl_tensorboard_and_table(tiny_model_dir, tmp_path, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(_args(tiny_model_dir, tmp_path, "iteration_size=2")) == 0
    run_dir = _run_dir(tmp_path)
    records = read_steps(run_dir / "steps.jsonl")
    assert len(records) == 6  # 3 agents x 2 passages
    iterations = read_steps(run_dir / "iterations.jsonl")
    assert [i["agent"] for i in iterations] == ["implications", "passage", "no_training"]
    for it in iterations:
        assert it["collapse/templates"] == 2.0
        assert it["collapse/hyperparameter_similarity"] == 1.0  # a fixed agent never varies
        assert it["collapse/distinct_configs"] == 1.0
    for record in records:
        for key in ("key", "agent", "reward", "accuracy", "base_accuracy", "gain",
                    "normalized_gain", "metrics", "template", "timings", "tokens", "results"):
            assert key in record, key
    assert {r["agent"] for r in records} == {"implications", "passage", "no_training"}
    # Every agent saw the same passages: the comparison is paired.
    by_agent = {a: [r["passage_ids"] for r in records if r["agent"] == a]
                for a in ("implications", "passage")}
    assert by_agent["implications"] == by_agent["passage"]

    events = EventAccumulator(str(run_dir / "tb" / "passage"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward/value", "accuracy/adapted", "accuracy/base", "metrics/f1",
            "time/train_s", "hyperparameters/lora_rank",
            "iteration/collapse/instruction_similarity"} <= scalars
    assert events.Scalars("reward/value")[-1].step == 1
    assert (run_dir / "config.yaml").is_file() and (run_dir / "table.md").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [a["agent"] for a in summary["agents"]] == ["implications", "passage", "no_training"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    (session,) = json.loads((run_dir / "environment.json").read_text())
    assert session["command"].startswith("selfedit run --config") and session["machine"]
    out = capsys.readouterr().out
    assert "| passage | 2 |" in out and "run directory" in out
    assert "plan: 3 agent(s) x 1 seed(s) x 2 step(s) = 6 steps" in out


def test_resume_finishes_a_killed_run_without_repeating(tiny_model_dir, tmp_path) -> None:
    assert main(_args(tiny_model_dir, tmp_path)) == 0
    run_dir = _run_dir(tmp_path)
    steps = run_dir / "steps.jsonl"
    lines = steps.read_text().splitlines(keepends=True)
    # A kill mid-write: two steps never ran, the third was torn half-way through its line.
    steps.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert main(["run", "--resume", str(run_dir)]) == 0
    records = read_steps(steps)
    keys = [r["key"] for r in records]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert [json.loads(x)["key"] for x in lines[:3]] == keys[:3]  # finished ones kept as-is


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.pasages=0:2", "unknown key 'env.pasages'; did you mean 'passages'?"),
        ("seeds=two", "run.seeds must be int"),
        ("env.reward_grader=judge-ish", "reward_grader must be one of"),
        ("agents=[implicatons]", "unknown agent 'implicatons'"),
        ("env.lora_rank=8", "unknown key 'env.lora_rank'"),
        ("nonsense", "must look like key=value"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, override: str, message: str) -> None:
    args = ["run", "--config", str(REPO / "configs" / "baselines_cpu.yaml"),
            f"output_dir={tmp_path}", override]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started


def test_missing_config_file(capsys) -> None:
    assert main(["run", "--config", "configs/nope.yaml"]) == 2
    assert "configs/nope.yaml does not exist" in capsys.readouterr().err


def test_keys_lists_every_env_field(capsys) -> None:
    from dataclasses import fields

    from selfedit.envs.config import EnvConfig

    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    assert all(f"env.{f.name} =" in out for f in fields(EnvConfig))


def test_overrides_may_follow_options() -> None:
    from selfedit.training.cli import parse_args

    args = parse_args(["run", "--config", "c.yaml", "seed=1", "--executor", "ray",
                       "executor.workers=2"])
    assert args.overrides == ["seed=1", "executor.workers=2"]
    assert args.executor == "ray"
    with pytest.raises(SystemExit):  # anything else left over is still an error
        parse_args(["run", "--config", "c.yaml", "seed=1", "--executor", "ray", "--bogus"])


def test_flag_commands_share_the_loader(tmp_path, capsys) -> None:
    """recitation and bench inner-loop: file < key=value < --flags, all one loader."""
    from selfedit.training.cli import RecitationArgs, _flag_values, parse_args
    from selfedit.training.experiment import load_experiment
    from selfedit.training.innerloop import InnerLoopConfig

    config = tmp_path / "bench.yaml"
    config.write_text("seed: 5\nprofile: true\nmatmul_size: 64\n")
    args = parse_args(["bench", "inner-loop", "--config", str(config), "--no-profile",
                       "seed=7", "--matmul-size", "32"])
    cfg = load_experiment(InnerLoopConfig, args.config, args.overrides,
                          values=_flag_values(args, InnerLoopConfig))
    assert (cfg.seed, cfg.profile, cfg.matmul_size) == (7, False, 32)
    assert main(["bench", "inner-loop", "matmul_size=big"]) == 2
    assert "matmul_size must be int, got str 'big'" in capsys.readouterr().err

    args = parse_args(["recitation", "passages=0:3", "--passages", "0:1"])
    assert load_experiment(RecitationArgs, None, args.overrides,
                           values=_flag_values(args, RecitationArgs)).passages == "0:1"
    out = tmp_path / "table.md"
    assert main(["recitation", "--passages", "0:1", "--output", str(out)]) == 0
    assert out.read_text().startswith(capsys.readouterr().out.splitlines()[0])


def test_graders_command_prints_the_label_agreement(capsys) -> None:
    """`selfedit graders --labels FILE` (issue 12): every grader's kappa against the labels."""
    from pathlib import Path

    labels = Path(__file__).resolve().parents[1] / "results" / "grader_validity" / "labels.jsonl"
    assert main(["graders", "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "| committed | all" in out and "kappa" in out.lower()
    assert main(["graders", "--labels", "/no/such/labels.jsonl"]) == 2
