"""ARC agents and the survey on a tiny model: baselines, the oracle's search, the recipe
writer's penalised failures, registry entries, and a survey run directory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model
from test_arc_env import DATASET, FAST

from selfedit.agents.arc import (
    ARC_BASELINES,
    FixedRecipeAgent,
    OracleSearchAgent,
    RecipeWriterAgent,
    arc_baseline,
    oracle_recipes,
    register_arc_agents,
)
from selfedit.agents.base import Agent
from selfedit.envs.arc import ArcEnv
from selfedit.envs.arc_recipe import parse_recipe
from selfedit.envs.arc_survey import SurveyConfig, load_survey_config, run_survey
from selfedit.envs.backend import HFBackend
from selfedit.envs.config import ConfigError


def eos_learning_backend(tokenizer) -> HFBackend:
    """The tiny model with a trainable EOS row (see test_arc_env's solved-task test)."""
    model = build_tiny_model(tokenizer)
    embed = model.model.embed_tokens
    with torch.no_grad():
        embed.weight[tokenizer.eos_token_id].normal_(0, model.config.initializer_range)
    embed.padding_idx = None
    return HFBackend(model, tokenizer=tokenizer, device="cpu")


def test_baselines_are_the_three_the_issue_names() -> None:
    assert set(ARC_BASELINES) == {"in_context", "no_augmentation", "all_augmentations"}
    assert not arc_baseline("in_context").trains
    assert arc_baseline("no_augmentation").augmentations == ()
    every = arc_baseline("all_augmentations", learning_rate=1e-3, loss="all")
    assert len(every.augmentations) == 19 and every.loss == "all"
    assert every.hyperparameters.learning_rate == 1e-3
    agent = FixedRecipeAgent("no_augmentation")
    assert isinstance(agent, Agent) and agent.act({}, {}) is agent.recipe
    with pytest.raises(KeyError, match="choose from"):
        arc_baseline("everything")


def test_oracle_searches_until_a_recipe_solves_and_reports_how_many(smol_tokenizer) -> None:
    env = ArcEnv(backend=eos_learning_backend(smol_tokenizer), **FAST)
    hp = {"lora_rank": 8, "lora_alpha": 16}
    recipes = [arc_baseline("in_context"),
               parse_recipe({"learning_rate": 1e-4, "num_epochs": 1, **hp})[0],
               parse_recipe({"learning_rate": 1e-2, "num_epochs": 8, **hp})[0],
               parse_recipe({"learning_rate": 1e-2, "num_epochs": 20, **hp})[0]]
    oracle = OracleSearchAgent(recipes)
    seen = []
    result = oracle.search(env, "const001", on_step=lambda a, r, i: seen.append(r))
    assert result.solved and result.tried == 3 and seen == [0.0, 0.0, 1.0]
    assert result.recipe["learning_rate"] == 1e-2 and result.recipe["num_epochs"] == 8
    # Solved: as an agent it keeps proposing the winner; the state survives a round trip.
    obs, info = env.reset(seed=0, options={"task_id": "const001"})
    assert oracle.act(obs, info).hyperparameters.num_epochs == 8
    again = OracleSearchAgent(recipes)
    again.load_state_dict(json.loads(json.dumps(oracle.state_dict())))
    assert again.results["const001"].tried == 3
    assert len(oracle_recipes()) == 49


def test_the_writer_hands_invalid_replies_to_the_env_for_the_penalty(tiny_backend) -> None:
    env = ArcEnv(backend=tiny_backend, **FAST)
    writer = RecipeWriterAgent(tiny_backend, max_new_tokens=12, max_retries=1, seed=0)
    obs, info = env.reset(seed=0, options={"task_id": "flip0001"})
    action = writer.act(obs, info)
    assert writer.counts["attempts"] == 2 and writer.counts["gave_up"] == 1
    assert isinstance(action, str) and action.startswith('{"augmentations": [')
    _, reward, _, _, step_info = env.step(action)
    assert reward == env.config.invalid_reward and step_info["error"]


def test_register_arc_agents_makes_them_config_entries(tiny_backend) -> None:
    from selfedit.agents.registry import check_agent_spec, make_agent

    register_arc_agents()
    fixed = make_agent({"type": "arc_fixed", "baseline": "no_augmentation",
                        "hyperparameters": {"learning_rate": 1e-3}})
    assert fixed.recipe.hyperparameters.learning_rate == 1e-3
    oracle = make_agent({"type": "arc_oracle", "recipes": [{"num_epochs": 0}]})
    assert len(oracle.recipes) == 1
    env = ArcEnv(backend=tiny_backend, **FAST)
    assert make_agent({"type": "arc_writer", "max_new_tokens": 8}, env).backend is tiny_backend
    with pytest.raises(ConfigError, match="unknown key"):
        check_agent_spec({"type": "arc_oracle", "recipe": {}})


def test_a_survey_writes_its_run_directory(tiny_backend, tmp_path) -> None:
    cfg = SurveyConfig.from_dict({
        "name": "arc_test", "output_dir": str(tmp_path), "max_minutes": 5,
        "env": {"tasks": "flip0001,const001"},
        "baseline_hyperparameters": {"lora_rank": 8, "learning_rate": 1e-3, "num_epochs": 1},
        "oracle_recipes": [{"loss": "all", "lora_rank": 8, "num_epochs": 1}],
        "writer": {"max_new_tokens": 8, "max_retries": 0},
    })
    env = ArcEnv(cfg.env, backend=tiny_backend, dataset=DATASET,
                 predict_max_tokens=FAST["predict_max_tokens"])
    run_dir = run_survey(cfg, env=env, command="pytest")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"] == ["flip0001", "const001"]
    lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
    # 3 baselines x 2 tasks, 1 new oracle recipe x 2 (the baselines' are cached), 1 writer x 2
    assert len(lines) == 6 + 2 + 2
    assert summary["solve_rates"]["oracle"] == "0/2"
    assert summary["per_task"]["flip0001"]["oracle"]["tried"] == 4
    assert summary["restem"]["ran"] is False and "no recipe" in summary["restem"]["why_not"]
    assert "| flip0001 |" in (run_dir / "summary.md").read_text()
    assert tiny_backend is env.backend


def test_survey_config_errors_say_what_to_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown baselines"):
        SurveyConfig.from_dict({"baselines": ["magic"]})
    with pytest.raises(ConfigError, match="oracle_recipes\\[0\\]"):
        SurveyConfig.from_dict({"oracle_recipes": [{"augmentations": ["spin"]}]})
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nenv:\n  tasks: seal_eval\n")
    cfg = load_survey_config(str(path), ["env.tasks=seal_train", "writer_samples=2"])
    assert cfg.env.tasks == "seal_train" and cfg.writer_samples == 2
    with pytest.raises(ConfigError, match="did you mean"):
        load_survey_config(str(path), ["env.taks=x"])


def test_a_survey_out_of_time_lists_what_it_skipped(tiny_backend, tmp_path) -> None:
    cfg = SurveyConfig.from_dict({"output_dir": str(tmp_path), "max_minutes": 1e-9,
                                  "env": {"tasks": "flip0001"}, "writer_samples": 0})
    env = ArcEnv(cfg.env, backend=tiny_backend, dataset=DATASET)
    summary = json.loads((run_survey(cfg, env=env) / "summary.json").read_text())
    assert len(summary["skipped"]) == 3 + 1  # three baselines, then the oracle's first recipe
    assert summary["per_task"]["flip0001"]["oracle"]["tried"] == 0
    assert summary["restem"]["why_not"] == "writer_samples: 0"
