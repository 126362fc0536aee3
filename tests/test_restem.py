"""ReST-EM on a tiny model built in the test: the policy learns, resumes, and is evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfedit.envs.backend import HFBackend, weights_checksum
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.restem import RestemConfig, load_train_config, train_restem

FAST_ENV = {"completion_max_tokens": 12, "answer_max_tokens": 6, "baseline_cache": None}


def _cfg(tmp_path: Path, **kw) -> RestemConfig:
    base = {
        "name": "t", "output_dir": str(tmp_path / "out"), "progress": False,
        "iterations": 2, "templates_per_iteration": 2, "completions_per_passage": 1,
        "positive_gain_only": False,  # a random tiny model gains nothing: keep the best anyway
        "train_passages": "0:2", "heldout_passages": "2:3", "heldout_samples": 1,
        "baselines": ["passage", "no_training"], "max_new_tokens": 24, "max_retries": 1,
        "sft": {"learning_rate": 5e-3, "epochs": 1, "lora_rank": 4, "lora_alpha": 8,
                "batch_size": 2, "max_length": 512},
        "env": FAST_ENV,
    }
    base.update(kw)
    return RestemConfig.from_dict(base)


def _env(backend, cfg: RestemConfig) -> SelfEditEnv:
    return SelfEditEnv(cfg.env, backend=backend)


def _evaluations(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]


def test_iteration_updates_the_policy_and_the_next_samples_from_it(tiny_backend, tmp_path):
    cfg = _cfg(tmp_path)
    env = _env(tiny_backend, cfg)
    before = weights_checksum(tiny_backend.model)
    start_fp = tiny_backend.fingerprint
    # Record the weights every meta-prompt generation ran with.
    sampled_with: list[str] = []
    generate = tiny_backend.generate

    def spy(prompts, **kw):
        if "self-edit template" in prompts[0]:
            sampled_with.append(weights_checksum(tiny_backend.model))
        return generate(prompts, **kw)

    tiny_backend.generate = spy
    run_dir = train_restem(cfg, env=env)
    records = [json.loads(x) for x in (run_dir / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    first, second = records[1], records[2]
    # Iteration 1 sampled from the initial policy, trained on its winners, changed the weights.
    assert first["policy_fingerprint"] == start_fp
    assert first["sft"]["examples"] >= 2 and first["sft"]["losses"]
    assert {"template_examples", "completion_examples"} <= set(first["sft"])
    assert first["sft"]["template_examples"] >= 1
    assert first["policy_fingerprint_after"] != start_fp
    after_1 = sampled_with[-1]
    assert weights_checksum(tiny_backend.model) != before
    # Iteration 2 sampled from the updated policy (self mode: it is the env's model too).
    assert second["policy_fingerprint"] == first["policy_fingerprint_after"]
    assert env.backend.fingerprint == second["policy_fingerprint_after"]
    # Sampling calls: iteration 0 held-out (greedy + sample), iteration 1 (K), held-out after
    # 1, iteration 2, held-out after 2. The first ones saw the initial weights, the later
    # ones the weights after iteration 1's SFT.
    assert sampled_with[0] == before
    assert len(set(sampled_with)) == 3 and after_1 != before
    # The evaluations of iteration 2 ran on the updated env model (fresh baselines).
    fps = {e["fingerprint"] for e in _evaluations(run_dir)}
    assert {start_fp, first["policy_fingerprint_after"]} <= fps
    # Checkpoints: adapter as safetensors, RNG states, the record.
    ckpt = run_dir / "checkpoints" / "iter_001"
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert {"rng", "record", "policy_fingerprint"} <= set(state)
    # Held-out table next to the baselines.
    table = (run_dir / "heldout.md").read_text()
    assert "passage" in table and "no_training" in table and "| 2 |" in table
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"][0]["baselines"]["no_training"] is not None
    # TensorBoard per iteration.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/reward_mean", "train/reward_max", "heldout/greedy", "sft/loss_last",
            "heldout/baseline_passage"} <= set(tags["scalars"])
    assert {"train/reward_distribution", "hyperparameters/lora_rank"} <= set(tags["histograms"])
    assert "templates" in str(tags["tensors"])


def test_separate_mode_trains_the_policy_not_the_env(tiny_backend, smol_tokenizer, tmp_path):
    from conftest import build_tiny_model

    cfg = _cfg(tmp_path, iterations=1, mode="separate", policy_model="(given)",
               heldout_samples=0, baselines=["no_training"])
    policy = HFBackend(build_tiny_model(smol_tokenizer, seed=1), tokenizer=smol_tokenizer,
                       device="cpu")
    env = _env(tiny_backend, cfg)
    env_before, policy_before = env.base_checksum(), weights_checksum(policy.model)
    run_dir = train_restem(cfg, env=env, policy_backend=policy)
    assert env.base_checksum() == env_before
    assert weights_checksum(policy.model) != policy_before
    record = json.loads((run_dir / "iterations.jsonl").read_text().splitlines()[1])
    assert record["sft"]["completion_examples"] == 0  # the env's model completes: not trained


class Killed(Exception):
    pass


def test_killed_run_resumes_without_repeating_evaluations(smol_tokenizer, tmp_path):
    from conftest import build_tiny_model

    def fresh_env(cfg):
        backend = HFBackend(build_tiny_model(smol_tokenizer), tokenizer=smol_tokenizer,
                            device="cpu")
        return _env(backend, cfg)

    # Uninterrupted.
    cfg = _cfg(tmp_path / "a", heldout_samples=0, baselines=["no_training"])
    env = fresh_env(cfg)
    full = train_restem(cfg, env=env)
    full_evals = {e["key"]: e for e in _evaluations(full)}
    full_final = env.backend.fingerprint

    # Killed in iteration 2, before its (batched) evaluations are written.
    cfg = _cfg(tmp_path / "b", heldout_samples=0, baselines=["no_training"])
    env = fresh_env(cfg)
    steps, evaluate = [0], env.evaluate
    kill_at = sum(1 for e in full_evals.values()
                  if e["fingerprint"] == env.backend.fingerprint) + 1

    def dying_evaluate(requests):
        if steps[0] + len(requests) >= kill_at:
            raise Killed
        steps[0] += len(requests)
        return evaluate(requests)

    env.evaluate = dying_evaluate
    with pytest.raises(Killed):
        train_restem(cfg, env=env)
    (run_dir,) = list((tmp_path / "b" / "out").iterdir())
    assert (run_dir / "checkpoints" / "iter_001").is_dir()
    assert not (run_dir / "checkpoints" / "iter_002").exists()
    done_before = len(_evaluations(run_dir))

    # Resumed in a new env (the process died: fresh weights, rebuilt from the checkpoint).
    env = fresh_env(cfg)
    counted, evaluate2 = [0], env.evaluate

    def counting_evaluate(requests):
        counted[0] += len(requests)
        return evaluate2(requests)

    env.evaluate = counting_evaluate
    train_restem(cfg, resume=run_dir, env=env)
    evals = _evaluations(run_dir)
    keys = [e["key"] for e in evals]
    assert len(keys) == len(set(keys)), "an evaluation was repeated"
    assert set(keys) == set(full_evals)
    assert counted[0] == len(full_evals) - done_before
    for e in evals:
        assert e["reward"] == full_evals[e["key"]]["reward"]
    assert env.backend.fingerprint == full_final
    lines = (run_dir / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1, 2]


def test_config_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="disjoint"):
        train_restem(_cfg(tmp_path, train_passages="0:3", heldout_passages="2:4"),
                     env=_FakeEnv())
    with pytest.raises(ConfigError, match="needs policy_model"):
        _cfg(tmp_path, mode="separate")
    with pytest.raises(ConfigError, match="did you mean 'templates_per_iteration'"):
        _cfg(tmp_path, templates_per_iter=3)
    with pytest.raises(ConfigError, match="sft.lora_rank must be int"):
        _cfg(tmp_path, sft={"lora_rank": "big"})
    with pytest.raises(ConfigError, match="rather than env.completions_per_passage"):
        _cfg(tmp_path, completions_per_passage=2, env={"completions_per_passage": 3})
    with pytest.raises(ConfigError, match="needs mode: self"):
        _cfg(tmp_path, mode="separate", policy_model="x", train_on=["completions"])


class _FakeEnv:
    """Only a corpus: the disjointness check runs before any model is needed."""

    def __init__(self):
        from selfedit.envs.selfedit_env import load_env_corpus

        self.corpus = load_env_corpus("embedded")


def test_shipped_configs_load():
    repo = Path(__file__).resolve().parents[1]
    cpu = load_train_config(repo / "configs" / "restem_cpu.yaml")
    gpu = load_train_config(repo / "configs" / "restem_gpu.yaml")
    assert cpu.iterations == 2 and cpu.env.model == "embedded"
    assert gpu.env.completions_per_passage == gpu.completions_per_passage
    assert isinstance(cpu.env, EnvConfig)


def test_cli_train_and_resume_of_a_finished_run(tiny_model_dir, tmp_path, capsys):
    from selfedit.training.cli import main

    repo = Path(__file__).resolve().parents[1]
    args = ["train", "--config", str(repo / "configs" / "restem_cpu.yaml"),
            f"env.model={tiny_model_dir}", "env.dtype=float32", "env.completion_max_tokens=12",
            "env.answer_max_tokens=6", "env.baseline_cache=null", f"output_dir={tmp_path}",
            "iterations=1", "templates_per_iteration=1", "train_passages=0:1",
            "heldout_passages=1:2", "heldout_samples=0", "baselines=[no_training]",
            "max_new_tokens=16", "positive_gain_only=false", "sft.epochs=1", "sft.max_length=512",
            "progress=false"]
    assert main(args) == 0
    (run_dir,) = list(tmp_path.iterdir())
    assert (run_dir / "command.txt").read_text().startswith("selfedit train --config")
    assert "iterations: 1" in (run_dir / "config.yaml").read_text()
    evaluations = (run_dir / "evaluations.jsonl").read_text()
    assert main(["train", "--resume", str(run_dir)]) == 0  # nothing left to do
    assert (run_dir / "evaluations.jsonl").read_text() == evaluations
    assert "| 1 |" in capsys.readouterr().out
    assert main(["train", "--resume", str(run_dir), "iterations=3"]) == 2
    assert "drop --config and overrides" in capsys.readouterr().err


def test_select_winners_filters_by_gain_and_keeps_best_completions():
    from selfedit.envs.selfedit_env import load_env_corpus
    from selfedit.envs.templates import Template
    from selfedit.training.evaluation import Evaluation
    from selfedit.training.policy import Sample
    from selfedit.training.restem import select_winners

    corpus = load_env_corpus("embedded")
    good = Template("List every fact.", include_passage=True)
    meh = Template("Summarise.", include_passage=True)
    samples = [Sample("meh", meh), Sample("bad", None), Sample("good", good)]

    def ev(reward, gains):
        return Evaluation("k", 0, corpus[0].id, 0, "fp", "t", True, reward, reward, 0.0, reward,
                          completions=[{"completion": f"c{g}", "accuracy": g, "gain": g,
                                        "base_accuracy": 0.0} for g in gains])

    invalid = Evaluation("k", 0, corpus[0].id, 0, "fp", "bad", False, -0.1, error="invalid")
    scores = [[ev(0.2, [0.2, 0.0])], [invalid], [ev(0.5, [0.0, 0.5, 0.3])]]
    examples, kept = select_winners(samples, scores, corpus, keep=1, completions_kept=2,
                                    positive_gain_only=True,
                                    kinds=["templates", "completions"], meta_prompt="META")
    assert [k["template"] for k in kept] == [2]
    assert [(e.kind, e.completion) for e in examples] == [
        ("templates", "good"), ("completions", "c0.5"), ("completions", "c0.3")]
    assert examples[1].prompt.startswith("List every fact.") and corpus[0].title in \
        examples[1].prompt
    # Nothing beats the baseline: nothing is kept, and the policy will not change.
    flat = [[ev(0.0, [0.0])], [invalid], [ev(0.0, [0.0])]]
    assert select_winners(samples, flat, corpus, keep=2, completions_kept=1,
                          positive_gain_only=True, kinds=["templates"],
                          meta_prompt="M") == ([], [])


def test_eval_cache_survives_a_torn_line_and_rng_round_trips(tmp_path):
    import random

    import numpy as np
    import torch

    from selfedit.training.checkpoint import rng_state, set_rng_state
    from selfedit.training.evaluation import EvalCache

    cache = EvalCache(tmp_path / "e.jsonl")
    cache.put({"key": "a", "reward": 0.5})
    cache.close()
    with (tmp_path / "e.jsonl").open("a") as handle:
        handle.write('{"key": "b", "rew')  # killed mid-write
    cache = EvalCache(tmp_path / "e.jsonl")
    assert len(cache) == 1 and cache.get("a")["reward"] == 0.5 and cache.get("b") is None
    cache.put({"key": "c", "reward": 1.0})
    cache.close()
    assert len(EvalCache(tmp_path / "e.jsonl")) == 2

    state = json.loads(json.dumps(rng_state()))  # survives JSON
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_backend_refresh_follows_the_weights(tiny_backend):
    import torch

    before = tiny_backend.fingerprint
    assert tiny_backend.refresh() == before  # same weights, same fingerprint
    with torch.no_grad():
        next(tiny_backend.model.parameters()).add_(1.0)
    assert tiny_backend.refresh() != before
    assert tiny_backend.refresh("run-step3").endswith("-run-step3")
