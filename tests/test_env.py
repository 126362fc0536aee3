"""Real env steps on a tiny model built in the test: LoRA trains, answers change, base intact."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import selfedit  # noqa: F401 - registers selfedit/SQuAD-v0
from selfedit.agents import HUMAN_BASELINES
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv

FAST = {"completion_max_tokens": 24, "answer_max_tokens": 8, "baseline_cache": None}


def passage_template(**hp) -> str:
    return json.dumps({"data_creation_instruction": "", "include_passage": True,
                       "hyperparameters": {"lora_rank": 8, "learning_rate": 3e-3,
                                           "num_epochs": 4, **hp}})


@pytest.fixture()
def env(tiny_backend):
    return SelfEditEnv(backend=tiny_backend, **FAST)


def test_check_env_passes(env) -> None:
    check_env(env, skip_render_check=True)


def test_gymnasium_make_with_kwargs(tiny_backend) -> None:
    env = gymnasium.make("selfedit/SQuAD-v0", backend=tiny_backend, passages_per_step=2, **FAST)
    obs, info = env.reset(seed=3)
    assert obs["passage_ids"].shape == (2,)
    assert env.observation_space.contains(obs)
    assert len(info["passage_ids"]) == 2


def test_step_trains_and_leaves_base_bit_identical(env) -> None:
    env.reset(seed=0, options={"passage_ids": [0]})
    before = env.base_checksum()
    _, reward, terminated, truncated, info = env.step(passage_template())
    assert terminated and not truncated
    assert info["error"] is None
    result = info["results"][0]
    # The adapter learned the passage: loss fell and the answers are not the base answers.
    assert result["update"]["loss_last"] < result["update"]["loss_first"]
    assert result["answers"] != result["base_answers"]
    assert result["update"]["optimizer_steps"] == 4
    assert env.base_checksum() == before
    # Everything the issue promises is in info.
    for key in ("template", "accuracy", "base_accuracy", "gain", "normalized_gain",
                "metrics", "base_metrics", "tokens", "timings"):
        assert key in info
    assert set(info["metrics"]) >= {"exact_match", "f1", "contains"}
    assert reward == info["accuracy"]
    assert info["tokens"]["train"] > 0


def test_steps_are_deterministic_for_a_seed(env) -> None:
    env.reset(seed=5)
    _, r1, _, _, info1 = env.step(HUMAN_BASELINES["implications"].to_json())
    env.reset(seed=5)
    _, r2, _, _, info2 = env.step(HUMAN_BASELINES["implications"].to_json())
    assert r1 == r2
    a, b = info1["results"][0], info2["results"][0]
    assert a["completion"] == b["completion"]
    assert a["answers"] == b["answers"]
    assert a["update"]["loss_last"] == b["update"]["loss_last"]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("not json at all", "no JSON object"),
        ('{"data_creation_instruction": "x", "hyperparameters": {"lora_rank": 4096}}',
         "lora_rank must be between 1 and 256, got 4096"),
        ('{"data_creation_instruction": "x", "hyperparameters": {"num_epochs": -1}}',
         "num_epochs must be between"),
        ('{"hyperparameters": {}}', "missing 'data_creation_instruction'"),
        ("", "no JSON object"),
        ("\x00\x07\u202e{", "no JSON object"),
        (12345, "must be a JSON object"),
    ],
)
def test_bad_actions_give_error_and_penalty(env, action, message: str) -> None:
    env.reset(seed=0)
    before = env.base_checksum()
    obs, reward, terminated, _, info = env.step(action)
    assert reward == env.config.invalid_reward < 0
    assert terminated
    assert message in info["error"]
    assert env.observation_space.contains(obs)
    assert env.base_checksum() == before


def test_no_training_scores_the_base(env) -> None:
    env.reset(seed=1)
    _, reward, _, _, info = env.step(HUMAN_BASELINES["no_training"])
    assert info["error"] is None
    assert reward == info["base_accuracy"]
    assert info["results"][0]["answers"] == info["results"][0]["base_answers"]
    assert info["tokens"]["train"] == 0


def test_several_passages_and_completions(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, passages_per_step=2, completions_per_passage=2,
                      **FAST)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(HUMAN_BASELINES["implications"].to_json())
    assert info["error"] is None
    assert len(info["results"]) == 4
    assert reward == pytest.approx(np.mean([r["accuracy"] for r in info["results"]]))
    completions = [r["completion"] for r in info["results"]]
    assert completions[0] != completions[1]  # sampled independently


def test_self_edit_mode_shows_the_passage(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, action_mode="self_edit", **FAST)
    obs, _ = env.reset(seed=0, options={"passage_ids": [2]})
    passage = env.corpus[2]
    assert passage.context[:50] in obs["prompt"]
    action = json.dumps({"sequences": [passage.context],
                         "hyperparameters": {"num_epochs": 3, "learning_rate": 1e-2}})
    _, _, _, _, info = env.step(action)
    assert info["error"] is None
    assert info["results"][0]["sequences"] == [passage.context]
    assert info["results"][0]["update"]["optimizer_steps"] == 3


def test_baseline_is_cached_on_disk(tiny_backend, tmp_path) -> None:
    cfg = {**FAST, "baseline_cache": str(tmp_path)}
    env = SelfEditEnv(backend=tiny_backend, **cfg)
    env.reset(seed=0, options={"passage_ids": [0]})
    env.step(HUMAN_BASELINES["no_training"])
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    # The key names the model and the reward grader.
    assert tiny_backend.fingerprint in files[0].name and "committed" in files[0].name
    # A new env reads the file instead of answering again: poison the cached answers.
    entry = json.loads(files[0].read_text())
    entry["answers"] = ["from the cache"] * len(entry["answers"])
    files[0].write_text(json.dumps(entry))
    env2 = SelfEditEnv(backend=tiny_backend, **cfg)
    env2.reset(seed=0, options={"passage_ids": [0]})
    _, _, _, _, info = env2.step(HUMAN_BASELINES["no_training"])
    assert info["results"][0]["base_answers"][0] == "from the cache"


def test_archive_section_lists_best_and_worst(tiny_backend) -> None:
    from selfedit.envs.wrappers import ArchiveObservation

    env = ArchiveObservation(SelfEditEnv(backend=tiny_backend, **FAST), show=1)
    obs, _ = env.reset(seed=0)
    assert "Templates evaluated so far" not in obs["prompt"]
    env.step(HUMAN_BASELINES["no_training"])
    obs, _ = env.reset(seed=1)
    assert "Templates evaluated so far" in obs["prompt"]
    assert '"num_epochs": 0' in obs["prompt"]


def test_archive_does_not_leak_between_agents_sharing_an_env(tiny_backend) -> None:
    """Issue 14: one env shared by two agents; each sees only its own templates."""
    from selfedit.envs.wrappers import ArchiveObservation

    shared = SelfEditEnv(backend=tiny_backend, **FAST)
    first, second = ArchiveObservation(shared, show=2), ArchiveObservation(shared, show=2)
    first.reset(seed=0)
    first.step(HUMAN_BASELINES["no_training"])
    obs, _ = second.reset(seed=0)
    assert "Templates evaluated so far" not in obs["prompt"]
    assert "Templates evaluated so far" not in shared.reset(seed=0)[0]["prompt"]
    with pytest.raises(ConfigError, match="archive_show was removed"):
        SelfEditEnv(backend=tiny_backend, archive_show=1, **FAST)


def test_config_errors_name_the_key(tiny_backend) -> None:
    with pytest.raises(ConfigError, match="did you mean 'passages_per_step'"):
        SelfEditEnv(backend=tiny_backend, passage_per_step=2)
    with pytest.raises(ConfigError, match="env.answer_max_tokens must be int"):
        SelfEditEnv(backend=tiny_backend, answer_max_tokens="many")
    with pytest.raises(ConfigError, match=r"only \d+ passages"):
        SelfEditEnv(backend=tiny_backend, passages_per_step=1000)


def test_local_judge_as_reward_grader(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, reward_grader="judge", **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    _, reward, _, _, info = env.step(passage_template(num_epochs=1))
    assert info["error"] is None
    verdicts = info["results"][0]["verdicts"]["judge"]
    assert len(verdicts) == len(env.corpus[0].questions)
    assert set(verdicts) <= {0.0, 1.0}
    assert reward == pytest.approx(float(np.mean(verdicts)))
    assert "judge" in info["base_metrics"]


def test_the_judge_prompt_is_configurable_and_keys_the_baseline_cache(tiny_backend) -> None:
    from selfedit.envs.judge import JUDGE_PROMPT, RUBRIC_JUDGE_PROMPT

    rubric = SelfEditEnv(backend=tiny_backend, reward_grader="judge", **FAST)
    lenient = SelfEditEnv(backend=tiny_backend, reward_grader="judge", judge_prompt="lenient",
                          **FAST)
    assert rubric.grader.prompt_template == RUBRIC_JUDGE_PROMPT and rubric.grader.max_words == 40
    assert lenient.grader.prompt_template == JUDGE_PROMPT and lenient.grader.max_words == 12
    passage = rubric.corpus[0]
    # A judge's cached base scores are its prompt's: another prompt, another cache entry.
    assert rubric._baseline_key(passage) != lenient._baseline_key(passage)
    plain = SelfEditEnv(backend=tiny_backend, **FAST)
    assert "|" not in plain._baseline_key(passage)
    with pytest.raises(ConfigError, match="judge_prompt must be 'rubric' or 'lenient'"):
        SelfEditEnv(backend=tiny_backend, reward_grader="judge", judge_prompt="kind", **FAST)


def test_clamp_policy_evaluates_and_reports(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, hyperparameter_policy="clamp", **FAST)
    env.reset(seed=0)
    _, _, _, _, info = env.step(passage_template(num_epochs=10**6, lora_rank=4096))
    assert info["error"] is None
    assert info["validation"]["clamped"]["num_epochs"] == (10**6, 50)
    assert info["template"]["hyperparameters"]["lora_rank"] == 256


def test_info_is_plain_json(env) -> None:
    """Issue 14: info goes straight into json.dumps (timings included), both outcomes."""
    env.reset(seed=0, options={"passage_ids": [0]})
    _, _, _, _, info = env.step(passage_template(num_epochs=1))
    round_trip = json.loads(json.dumps(info))
    assert round_trip["results"][0]["timings"]["train_s"] >= 0
    assert round_trip["timings"]["step_s"] > 0
    _, _, _, _, bad = env.step("not a template")
    assert json.loads(json.dumps(bad))["error"]


def test_sampled_answers_are_repeated_graded_and_deterministic(tiny_backend) -> None:
    """Issue 17: answers sampled at a temperature, R repeats of one adapter, each graded."""
    env = SelfEditEnv(backend=tiny_backend, answer_temperature=0.7, answer_samples=3, **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    _, reward, _, _, info = env.step(passage_template(num_epochs=1))
    (result,) = info["results"]
    assert len(result["answer_samples"]) == 3 and len(result["repeat_accuracy"]) == 3
    assert result["answers"] == result["answer_samples"][0]
    assert result["accuracy"] == pytest.approx(np.mean(result["repeat_accuracy"]))
    assert len(result["base_answers"]) == len(env.corpus[0].questions)
    # Same seed, same samples; another step seed, other samples.
    env.reset(seed=0, options={"passage_ids": [0]})
    _, again, _, _, info2 = env.step(passage_template(num_epochs=1))
    assert info2["results"][0]["answer_samples"] == result["answer_samples"]
    greedy = SelfEditEnv(backend=tiny_backend, **FAST)
    greedy.reset(seed=0, options={"passage_ids": [0]})
    _, _, _, _, plain = greedy.step(passage_template(num_epochs=1))
    assert plain["results"][0]["answer_samples"] is None
    with pytest.raises(ConfigError, match="answer_samples=3 with greedy answers"):
        SelfEditEnv(backend=tiny_backend, answer_samples=3, **FAST)


def test_the_reward_grader_gets_the_steps_remaining_budget(tiny_backend) -> None:
    """Issue 13 item 6: grading belongs inside the step budget (a judge uses it as deadline)."""
    from selfedit.envs.selfedit_env import JUDGE_GRACE_S

    seen: list[float | None] = []

    def grader(answers, golds, **kwargs):
        seen.append(kwargs.get("time_budget_s"))
        return [0.0] * len(answers)

    env = SelfEditEnv(backend=tiny_backend, grader=grader, reward_grader="judge",
                      max_step_seconds=120, **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    _, _, _, _, info = env.step(passage_template(num_epochs=1))
    assert info["error"] is None
    step_budgets = [b for b in seen if b is not None]  # the baseline is graded off-step
    assert step_budgets and all(0 < b <= 120 + JUDGE_GRACE_S for b in step_budgets)
