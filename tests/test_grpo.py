"""GRPO through TRL's GRPOTrainer on a tiny model, the env as the reward function."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from selfedit.envs.backend import HFBackend, weights_checksum
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.grpo import EnvReward, GRPORunConfig, train_grpo
from selfedit.training.restem import load_train_config

FAST_ENV = {"completion_max_tokens": 12, "answer_max_tokens": 6, "baseline_cache": None,
            # A tiny random model answers nothing right under any SQuAD grader, so every
            # template would tie and GRPO's advantages would be zero. The test's grader (in
            # the env's judge slot) scores a hash of each answer instead: different adapters
            # give different answers, hence different rewards, through the real env path.
            "reward_grader": "judge"}


def hash_grader(answers, golds, **kwargs) -> list[float]:
    return [float(zlib.crc32(a.encode()) % 2) for a in answers]


# The reply opens with settings that make a tiny model's adapter change its answers (the
# default opener leaves SEAL's lr 1e-3, under which a random 2-layer model keeps answering
# nothing); the random instruction that follows still differs per sampled template.
OPENER = ('{"hyperparameters": {"learning_rate": 0.01, "num_epochs": 3, "lora_rank": 8},'
          ' "include_passage": true, "data_creation_instruction": "')


@pytest.fixture(autouse=True)
def _opener(monkeypatch):
    monkeypatch.setattr("selfedit.training.grpo.JSON_PREFIX", OPENER)


def _cfg(tmp_path: Path, **kw) -> GRPORunConfig:
    base = {"name": "g", "output_dir": str(tmp_path / "out"), "progress": False, "steps": 2,
            "num_generations": 3, "max_new_tokens": 16, "learning_rate": 5e-3,
            "lora_rank": 4, "lora_alpha": 8, "train_passages": "0:3",
            "heldout_passages": "3:4", "heldout_samples": 0, "baselines": ["no_training"],
            "env": FAST_ENV}
    base.update(kw)
    return GRPORunConfig.from_dict(base)


def _env(backend, cfg) -> SelfEditEnv:
    return SelfEditEnv(cfg.env, backend=backend, grader=hash_grader)


def test_grpo_self_mode_updates_the_policy_and_the_env_follows(tiny_backend, tmp_path):
    # TRL keys the runner also sets take the user's values (they used to crash GRPOConfig).
    cfg = _cfg(tmp_path, trl={"logging_steps": 1, "report_to": "none"})
    env = _env(tiny_backend, cfg)
    before = env.base_checksum()
    run_dir = train_grpo(cfg, env=env)
    # The policy changed, and in self mode the env's model is the final policy.
    assert env.base_checksum() != before
    assert (run_dir / "policy" / "adapter_model.safetensors").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["reward_calls"] == 2
    assert summary["env_steps"] >= 1  # templates were really scored by the env
    evals = [json.loads(x) for x in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    # Step 1's rewards were computed on the weights after step 0's update.
    assert len({e["fingerprint"] for e in evals}) >= 2
    assert [r["iteration"] for r in map(json.loads, (run_dir / "iterations.jsonl")
                                        .read_text().splitlines())] == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trl_events = EventAccumulator(str(run_dir / "tb" / "trl"))
    trl_events.Reload()
    assert any("reward" in t for t in trl_events.Tags()["scalars"])
    env_events = EventAccumulator(str(run_dir / "tb" / "env"), size_guidance={"histograms": 0})
    env_events.Reload()
    assert "env/reward_mean" in env_events.Tags()["scalars"]
    assert "env/reward_distribution" in env_events.Tags()["histograms"]
    assert "_hparams_/session_start_info" in env_events.PluginTagToContent("hparams")


def test_grpo_separate_mode_full_weights(tiny_backend, smol_tokenizer, tmp_path):
    from conftest import build_tiny_model

    cfg = _cfg(tmp_path, mode="separate", policy_model="(given)", lora_rank=0, steps=1,
               heldout_passages=None, learning_rate=1e-3)
    policy = HFBackend(build_tiny_model(smol_tokenizer, seed=1), tokenizer=smol_tokenizer,
                       device="cpu")
    env = _env(tiny_backend, cfg)
    env_before, policy_before = env.base_checksum(), weights_checksum(policy.model)
    train_grpo(cfg, env=env, policy_backend=policy)
    assert env.base_checksum() == env_before
    assert weights_checksum(policy.model) != policy_before


def test_env_reward_scores_each_completion_on_its_passages(tiny_backend, tmp_path):
    from selfedit.training.evaluation import EvalCache, Evaluator

    cfg = _cfg(tmp_path)
    env = _env(tiny_backend, cfg)
    evaluator = Evaluator(env, EvalCache(tmp_path / "e.jsonl"), seed=0, progress=False)
    ok = 'List facts.", "include_passage": true}'
    reward = EnvReward(evaluator, metric="accuracy", prefix='{"data_creation_instruction": "')
    rewards = reward(prompts=["p"] * 3,
                     completions=[ok, ok, "\", 7]"],
                     passage_ids=[[0, 1], [0, 1], [0]])
    assert rewards[0] == rewards[1]  # the same template on the same passages: cached
    assert rewards[2] == env.config.invalid_reward
    assert evaluator.steps == 2  # 2 passages, once each
    assert 0.0 <= rewards[0] <= 1.0 and np.isfinite(rewards[0])


def test_grpo_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        _cfg(tmp_path, num_generations=1)
    with pytest.raises(ConfigError, match="reward must be one of"):
        _cfg(tmp_path, reward="loss")
    with pytest.raises(ConfigError, match="did you mean 'num_generations'"):
        _cfg(tmp_path, num_generation=4)


def test_shipped_grpo_configs_load():
    repo = Path(__file__).resolve().parents[1]
    cpu = load_train_config(repo / "configs" / "grpo_cpu.yaml")
    gpu = load_train_config(repo / "configs" / "grpo_gpu.yaml")
    assert isinstance(cpu, GRPORunConfig) and isinstance(gpu, GRPORunConfig)
    assert gpu.use_vllm and not cpu.use_vllm


def test_trl_keys_override_the_runners_values(tmp_path):
    from trl import GRPOConfig

    from selfedit.training.grpo import check_trl_arguments, trl_arguments

    cfg = _cfg(tmp_path, trl={"logging_steps": 3, "report_to": "tensorboard",
                              "learning_rate": 0.5, "loss_type": "grpo"})
    args = trl_arguments(cfg, str(tmp_path / "trainer"), use_cpu=True)
    assert (args["logging_steps"], args["report_to"], args["learning_rate"]) == (
        3, "tensorboard", 0.5)
    assert args["num_generations"] == cfg.num_generations  # the rest stays the runner's
    check_trl_arguments(cfg, use_cpu=True)
    assert GRPOConfig(**args).logging_steps == 3
    with pytest.raises(ConfigError, match="unknown key 'trl.loging_steps'; did you mean"):
        check_trl_arguments(_cfg(tmp_path, trl={"loging_steps": 3}), use_cpu=True)
    with pytest.raises(ConfigError, match="trl.output_dir: the run directory holds"):
        _cfg(tmp_path, trl={"output_dir": "/elsewhere"})


def test_trl_report_to_wandb_without_wandb_fails_before_the_run_directory(tiny_backend,
                                                                            tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    cfg = _cfg(tmp_path, trl={"report_to": "wandb"})
    with pytest.raises(ConfigError, match="needs the wandb package: pip install wandb"):
        train_grpo(cfg, env=_env(tiny_backend, cfg))
    assert not (tmp_path / "out").exists()


def test_public_reward_function_for_any_trl_trainer(tiny_backend, tmp_path):
    import inspect

    from selfedit.training import reward_function

    env = _env(tiny_backend, _cfg(tmp_path))
    opener = '{"data_creation_instruction": "'
    reward = reward_function(env, passages=[0, 1], prefix=opener)
    ok = 'List facts.", "include_passage": true}'
    # Exactly how GRPOTrainer calls a reward function: keywords, dataset columns included.
    rewards = reward(prompts=["p"] * 3, completions=[ok, ok, '", 7]'],
                     completion_ids=[[1], [1], [1]], trainer_state=None, other_column=[1, 2, 3])
    assert rewards[0] == rewards[1] and 0.0 <= rewards[0] <= 1.0
    assert rewards[2] == env.config.invalid_reward
    chat = reward(prompts=["p"], completions=[[{"role": "assistant", "content": ok}]],
                  passage_ids=[[0, 1]])
    assert chat == rewards[:1]  # conversational completions, passages from a column: cached
    assert reward.__name__ == "env_reward"
    assert {"prompts", "completions", "kwargs"} <= set(inspect.signature(reward).parameters)
    with pytest.raises(ValueError, match="passages_per_step=1"):
        reward_function(SelfEditEnv(backend=tiny_backend, passages_per_step=2,
                                    baseline_cache=None))
    gain = reward_function(env, passages=[0], prefix=opener, metric="gain")
    (value,) = gain(prompts=["p"], completions=[ok])
    assert -1.0 <= value <= 1.0
