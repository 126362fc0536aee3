"""selfedit/ARC-v0 through the project's runners (``env_id: selfedit/ARC-v0``): ``selfedit
run`` with fixed, oracle and bandit agents, resume, TensorBoard, ``selfedit train`` (one
ReST-EM iteration whose winning recipe trains the policy), the benchmark's paired statistics
on ARC records, and the SQuAD-only commands refusing ARC with one line.

Every model is a tiny Llama built here. Two things make ARC's 0/1 reward reachable on it:
the EOS embedding row is trained (the tiny config ties EOS to a zero, frozen padding row),
so a LoRA can learn to answer the task ``const001`` (every output is the grid ``1``); and for
ReST-EM, a few steps of next-token training teach the model to *write* that solving recipe
from a task's observation, so the policy has a winner to learn from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import build_tiny_model

from selfedit.envs.config import ConfigError
from selfedit.training.cli import main
from selfedit.training.runlog import read_steps

ARC = "selfedit/ARC-v0"
SOLVER = {"augmentations": [], "loss": "outputs", "learning_rate": 0.01, "num_epochs": 8,
          "lora_rank": 8, "lora_alpha": 16}
# What the policy model is taught to write after the reply prefix '{"augmentations": [':
# a recipe that solves const001 on that model (lora_alpha 16 is the recipes' default; the
# taught model needs more epochs than the plain one).
WRITTEN = '], "learning_rate": 0.01, "num_epochs": 12, "lora_rank": 8}'


def _pair(inp: tuple, out: tuple) -> dict[str, Any]:
    return {"input": [list(r) for r in inp], "output": [list(r) for r in out]}


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny tasks as an ARC JSON file: const001 (a LoRA on the tiny model solves it)
    and flip0001 (it does not)."""
    const = [_pair(((c,),), ((1,),)) for c in (2, 3, 4, 5)]
    flip = [_pair(((a, b),), ((b, a),)) for a, b in ((1, 2), (3, 4), (5, 6), (7, 8))]
    path = tmp_path_factory.mktemp("arc") / "tasks.json"
    path.write_text(json.dumps({"train": {
        "const001": {"train": const[:-1], "test": const[-1:]},
        "flip0001": {"train": flip[:-1], "test": flip[-1:]}}}))
    return path


def _solvable_model(tokenizer: Any) -> Any:
    model = build_tiny_model(tokenizer)
    embed = model.model.embed_tokens
    with torch.no_grad():  # a trained (nonzero) EOS row, as a real model has
        embed.weight[tokenizer.eos_token_id].normal_(0, model.config.initializer_range)
    embed.padding_idx = None
    return model


@pytest.fixture(scope="module")
def solver_dir(smol_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arc-solver")
    _solvable_model(smol_tokenizer).save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def writer_dir(smol_tokenizer: Any, arc_data: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The solvable model, taught (plain next-token loss on the reply only) to write the
    solving recipe after the recipe prefix, from every task's observation."""
    from selfedit.agents.arc import RECIPE_PREFIX
    from selfedit.envs.arc import ArcEnv
    from selfedit.envs.backend import HFBackend

    torch.manual_seed(0)
    backend = HFBackend(_solvable_model(smol_tokenizer), tokenizer=smol_tokenizer, device="cpu")
    env = ArcEnv(backend=backend, data=str(arc_data), tasks="all", predict_max_tokens=6)
    model, tok = backend.model, backend.tokenizer
    reply = tok(WRITTEN, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    heads = [tok(backend.format_prompt(env.prompt_for(i)) + RECIPE_PREFIX,
                 add_special_tokens=not backend.chat)["input_ids"] for i in range(2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(150):
        for head in heads:
            hidden = model.model(input_ids=torch.tensor([head + reply])).last_hidden_state
            logits = model.lm_head(hidden[0, len(head) - 1 : -1])  # (T_reply, V)
            torch.nn.functional.cross_entropy(logits, torch.tensor(reply)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out = tmp_path_factory.mktemp("arc-writer")
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


def _run_config(tmp: Path, model: Path, data: Path, **keys: Any) -> Path:
    raw = {
        "name": "arc_run", "env_id": ARC, "seeds": 2, "iteration_size": 2, "progress": False,
        "output_dir": str(tmp / "out"),
        "env": {"model": str(model), "dtype": "float32", "data": str(data), "tasks": "all",
                "predict_max_tokens": 6},
        "agents": [
            {"type": "arc_fixed", "name": "in_context", "baseline": "in_context"},
            {"type": "arc_fixed", "name": "solver", "recipe": SOLVER},
            {"type": "arc_oracle", "recipes": [{"num_epochs": 0}, SOLVER]},
            {"type": "arc_ucb1", "augmentations": [[]], "losses": ["all", "outputs"],
             "learning_rates": [0.01], "num_epochs": [8], "lora_rank": 8, "lora_alpha": 16},
        ],
        **keys,
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _outcomes(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["key"], r["recipe"], r["reward"], r["base_accuracy"], r["metrics"],
             [t["voted"] for t in r["tests"]]) for r in records]


def test_selfedit_run_steps_arc_with_fixed_oracle_and_bandit_agents(
        solver_dir: Path, arc_data: Path, tmp_path: Path, capsys: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["run", "--config", str(_run_config(tmp_path, solver_dir, arc_data))]) == 0
    (run_dir,) = list((tmp_path / "out").iterdir())
    records = read_steps(run_dir / "steps.jsonl")
    assert len(records) == 4 * 2 * 2  # agents x seeds x tasks: each seed sweeps the tasks
    by = {(r["agent"], r["seed_index"], r["passage_ids"][0]): r for r in records}
    # The step-info contract: the runner's fields, read alike from both envs.
    for r in records:
        assert r["error"] is None and r["reward"] == r["accuracy"] == r["metrics"]["solved"]
        assert r["base_accuracy"] == 0.0 and r["passage_ids"] == [r["task_id"]]
        assert set(r["metrics"]) == set(r["base_metrics"]) == {"solved", "tests_correct",
                                                                "cell_accuracy"}
        assert r["results"][0]["passage_id"] == r["task_id"]
    # In context the tiny model solves nothing; the solving recipe solves const001 only.
    assert [by["in_context", s, "const001"]["reward"] for s in (0, 1)] == [0.0, 0.0]
    assert [by["solver", s, "const001"]["reward"] for s in (0, 1)] == [1.0, 1.0]
    assert by["solver", 0, "flip0001"]["reward"] == 0.0
    assert by["solver", 0, "const001"]["gain"] == 1.0
    # The oracle tries its recipes in order across the seeds: in context first, then the
    # solver, which solves const001 on the second try.
    assert [by["arc_oracle", s, "const001"]["recipe"]["num_epochs"] for s in (0, 1)] == [0, 8]
    assert [by["arc_oracle", s, "const001"]["reward"] for s in (0, 1)] == [0.0, 1.0]
    # UCB1 plays each of its two arms once first: the recipes differ in their loss.
    losses = {r["recipe"]["loss"] for r in records if r["agent"] == "arc_ucb1"}
    assert losses == {"all", "outputs"}

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reward_grader"] == "solved"
    rows = {a["agent"]: a for a in summary["agents"]}
    assert rows["solver"]["reward"] == 0.5 and rows["in_context"]["reward"] == 0.0
    assert {"tests_correct", "cell_accuracy"} <= set(rows["solver"])
    table = (run_dir / "table.md").read_text()
    assert "reward (solved)" in table and "| cells |" in table and "| solver | 4 |" in table
    iterations = read_steps(run_dir / "iterations.jsonl")
    solver_it = next(i for i in iterations if i["agent"] == "solver")
    assert solver_it["collapse/distinct_recipes"] == 1.0
    assert solver_it["collapse/hyperparameter_similarity"] == 1.0
    out = capsys.readouterr().out
    assert "const001: reward 1.000  base 0.000  gain +1.000  cells 1.000" in out

    events = EventAccumulator(str(run_dir / "tb" / "solver"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward/value", "accuracy/adapted", "accuracy/base", "metrics/cell_accuracy",
            "base_metrics/solved", "hyperparameters/learning_rate", "recipe/augmentations",
            "time/train_s", "tokens/train", "iteration/reward/mean",
            "iteration/collapse/distinct_recipes"} <= scalars
    assert "recipe" in str(events.Tags()["tensors"])
    assert [e.value for e in events.Scalars("reward/value")] == [1.0, 0.0, 1.0, 0.0]


def test_a_killed_arc_run_resumes_to_the_uninterrupted_records(
        solver_dir: Path, arc_data: Path, tmp_path: Path) -> None:
    """Stateful agents (the oracle's search, UCB1's counts) resume from their saved state
    plus a replay of the recipe records they missed."""
    config = _run_config(tmp_path, solver_dir, arc_data, tensorboard=False)
    assert main(["run", "--config", str(config)]) == 0
    (run_dir,) = list((tmp_path / "out").iterdir())
    full = read_steps(run_dir / "steps.jsonl")
    # A kill after the oracle's first seed: its saved state is ahead of the records, so
    # state and records are both cut back (the state to before the kill, as written then).
    steps = run_dir / "steps.jsonl"
    lines = steps.read_text().splitlines(keepends=True)
    steps.write_text("".join(lines[:10]))
    state = run_dir / "state" / "arc_oracle.json"
    saved = json.loads(state.read_text())
    saved["steps"], saved["state"] = 0, {"results": {}}  # as saved before its first step
    state.write_text(json.dumps(saved))
    (run_dir / "state" / "arc_ucb1.json").unlink()
    assert main(["run", "--resume", str(run_dir)]) == 0
    resumed = read_steps(steps)
    assert _outcomes(resumed) == _outcomes(full)


def test_log_answers_false_drops_texts_and_replies_but_keeps_grids(
        solver_dir: Path, arc_data: Path, tmp_path: Path) -> None:
    config = _run_config(tmp_path, solver_dir, arc_data, log_answers=False, seeds=1,
                         tensorboard=False, agents=[{"type": "arc_fixed", "name": "solver",
                                                     "recipe": SOLVER}])
    assert main(["run", "--config", str(config)]) == 0
    (run_dir,) = list((tmp_path / "out").iterdir())
    for r in read_steps(run_dir / "steps.jsonl"):
        assert "texts" not in r["training"] and r["training"]["sequences"] == 3
        assert all("reply" not in p and "grid" in p for t in r["tests"]
                   for p in t["predictions"])


def test_arc_steps_on_ray_actors_give_the_serial_rewards(
        solver_dir: Path, arc_data: Path, tmp_path: Path) -> None:
    """The executor builds ARC envs on its actors from the config (env_id travels with it)."""
    ray = pytest.importorskip("ray")
    agents = [{"type": "arc_fixed", "name": "solver", "recipe": SOLVER},
              {"type": "arc_ucb1", "augmentations": [[]], "losses": ["all", "outputs"],
               "learning_rates": [0.01], "num_epochs": [8], "lora_rank": 8, "lora_alpha": 16}]
    outcomes = []
    for kind in ("serial", "ray"):
        (tmp_path / kind).mkdir()
        config = _run_config(tmp_path / kind, solver_dir, arc_data, tensorboard=False,
                             agents=agents, executor={"type": kind, "batch": 2, "workers": 1})
        if kind == "ray":
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            assert main(["run", "--config", str(config)]) == 0
        finally:
            if kind == "ray":
                ray.shutdown()
        (run_dir,) = list((tmp_path / kind / "out").iterdir())
        outcomes.append(_outcomes(read_steps(run_dir / "steps.jsonl")))
    assert len(outcomes[0]) == 8 and outcomes[1] == outcomes[0]


def _restem_config(tmp: Path, model: Path, data: Path) -> Path:
    raw = {
        "algorithm": "restem", "name": "arc_restem", "env_id": ARC, "seed": 0,
        "output_dir": str(tmp / "out"), "progress": False, "iterations": 1,
        "templates_per_iteration": 2, "train_passages": "0:1", "heldout_passages": "1:2",
        "heldout_samples": 1, "baselines": ["in_context", "no_augmentation"],
        "temperature": 0.3, "max_new_tokens": 40, "max_retries": 1, "min_reward": 1.0,
        "sft": {"learning_rate": 1e-3, "epochs": 1, "lora_rank": 4, "lora_alpha": 8,
                "batch_size": 2, "max_length": 1024},
        "env": {"model": str(model), "dtype": "float32", "data": str(data), "tasks": "all",
                "predict_max_tokens": 6},
    }
    path = tmp / "restem.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_selfedit_train_runs_a_restem_iteration_on_arc(
        writer_dir: Path, arc_data: Path, tmp_path: Path, capsys: Any) -> None:
    """Self mode (SEAL's setting): the model writes recipes for const001 from its
    observation, the recipes that solve it are the winners, SFT on (task prompt -> recipe)
    changes the model, and the held-out task and the baselines are evaluated."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", "--config", str(_restem_config(tmp_path, writer_dir, arc_data))]) == 0
    (run_dir,) = list((tmp_path / "out").iterdir())
    records = read_steps(run_dir / "iterations.jsonl")
    assert [r["iteration"] for r in records] == [0, 1]
    first = records[1]
    # Two recipes written for the one training task, each scored on it.
    assert len(first["templates"]) == 2 and all(t["valid"] for t in first["templates"])
    assert all(set(t["rewards"]) == {"const001"} for t in first["templates"])
    assert json.loads(first["templates"][0]["template"])["learning_rate"] == 0.01
    assert first["reward/max"] == 1.0 and first["reward/positive_gain"] >= 1
    # The winners trained the policy (its weights and fingerprint moved), the env followed.
    assert first["kept"] and all(k["reward"] == 1.0 for k in first["kept"])
    assert first["sft"]["template_examples"] == len(first["kept"])
    assert first["sft"]["completion_examples"] == 0
    assert first["policy_fingerprint_after"] != first["policy_fingerprint"]
    # Held-out: flip0001, a greedy and a sampled recipe, next to the baseline recipes.
    held = first["heldout"]
    assert [t["kind"] for t in held["templates"]] == ["greedy", "sampled"]
    assert set(held["templates"][0]["per_passage"]) == {"flip0001"}
    assert set(records[0]["baselines"]) == {"in_context", "no_augmentation"}
    evaluations = read_steps(run_dir / "evaluations.jsonl")
    assert {e["passage_id"] for e in evaluations} == {"const001", "flip0001"}
    table = (run_dir / "heldout.md").read_text()
    assert "in_context" in table and "| 1 |" in table
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    assert {"train/reward_mean", "heldout/greedy", "sft/loss_last",
            "heldout/baseline_in_context"} <= set(events.Tags()["scalars"])
    assert "hyperparameters/learning_rate" in events.Tags()["histograms"]

    # A finished run resumes to the same end: the checkpoint's adapter is merged again and
    # the rebuilt weights match the fingerprint it recorded.
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "starting at iteration 2" in capsys.readouterr().out


def test_benchmark_statistics_pair_arc_units_with_the_exact_sign_test(
        solver_dir: Path, arc_data: Path, tmp_path: Path) -> None:
    """The benchmark's budgets, units and paired tests read ARC step records unchanged: a
    unit is (seed, episode, task), its accuracy 0 or 1, and the exact sign test counts the
    discordant units (McNemar's exact test for paired 0/1 outcomes)."""
    from selfedit.training.benchmark_stats import check_budgets, compare, unit_scores

    config = _run_config(tmp_path, solver_dir, arc_data, tensorboard=False, agents=[
        {"type": "arc_fixed", "name": "in_context", "baseline": "in_context"},
        {"type": "arc_fixed", "name": "solver", "recipe": SOLVER}])
    assert main(["run", "--config", str(config)]) == 0
    (run_dir,) = list((tmp_path / "out").iterdir())
    records = read_steps(run_dir / "steps.jsonl")
    budgets = check_budgets(records, ["in_context", "solver"])
    assert budgets["solver"].evaluations == 4 and budgets["solver"].steps == 4
    units = unit_scores(records)
    assert sorted(units["solver"]) == [(0, 0, "const001"), (0, 1, "flip0001"),
                                       (1, 0, "const001"), (1, 1, "flip0001")]
    result = compare(units, "solver", "in_context", resamples=200, seed=0, confidence=0.95)
    assert (result.wins, result.losses, result.ties) == (2, 0, 2)
    assert result.mean_diff == 0.5 and result.p_sign == 0.5  # two discordant units: 2 * 1/4


def test_commands_not_yet_on_arc_refuse_it_in_one_line(tmp_path: Path, capsys: Any) -> None:
    raw = {"env_id": ARC, "agents": [{"type": "arc_fixed", "name": "ic",
                                      "baseline": "in_context"}],
           "output_dir": str(tmp_path / "out"), "noise_repeats": 0}
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump(raw))
    assert main(["benchmark", "--config", str(bench)]) == 2
    assert "selfedit benchmark runs on selfedit/SQuAD-v0 only" in capsys.readouterr().err
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text(yaml.safe_dump({"algorithm": "grpo", "env_id": ARC}))
    assert main(["train", "--config", str(grpo)]) == 2
    assert "runs on selfedit/SQuAD-v0 only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_env_id_errors_and_env_sections(tmp_path: Path) -> None:
    from selfedit.envs.arc import ArcConfig
    from selfedit.envs.config import EnvConfig
    from selfedit.training.config import RunConfig
    from selfedit.training.restem import RestemConfig

    arc = RunConfig.from_dict({"env_id": ARC, "env": {"tasks": "seal_eval"},
                               "agents": [{"type": "arc_fixed", "baseline": "in_context"}]})
    assert isinstance(arc.env, ArcConfig) and arc.to_dict()["env_id"] == ARC
    assert isinstance(RunConfig.from_dict({}).env, EnvConfig)  # the default is SQuAD's
    with pytest.raises(ConfigError, match="did you mean 'selfedit/ARC-v0'"):
        RunConfig.from_dict({"env_id": "selfedit/ARC-v1"})
    with pytest.raises(ConfigError, match="unknown key 'env.passages'"):
        RunConfig.from_dict({"env_id": ARC, "env": {"passages": "0:4"}})
    with pytest.raises(ConfigError, match="takes the keys of ArcConfig"):
        RunConfig(env_id=ARC, env=EnvConfig())
    restem = RestemConfig.from_dict({"env_id": ARC, "train_passages": "0:2",
                                     "heldout_passages": "2:3"})
    assert restem.baselines == ["in_context", "no_augmentation", "all_augmentations"]
    assert restem.example_kinds == ["templates"]
    for bad, why in (({"train_on": ["completions"]}, "trains on \\['templates'\\] only"),
                     ({"completions_per_passage": 2}, "must be 1 for selfedit/ARC-v0"),
                     ({"baselines": ["passage"]}, "unknown baselines \\['passage'\\]")):
        with pytest.raises(ConfigError, match=why):
            RestemConfig.from_dict({"env_id": ARC, **bad})
