"""selfedit/ARC-v0 on a tiny model built in the test: the Gymnasium contract, bad recipes,
base-weight integrity after success, failure and budget cuts, determinism, loss masks."""

from __future__ import annotations

import json

import gymnasium
import pytest
from conftest import build_tiny_model
from gymnasium.utils.env_checker import check_env

import selfedit  # noqa: F401 - registers selfedit/ARC-v0
from selfedit.envs.arc import ArcEnv, build_training_set, vote
from selfedit.envs.arc_data import ArcPair, ArcTask, grid_text, parse_grid
from selfedit.envs.arc_recipe import parse_recipe
from selfedit.envs.backend import HFBackend
from selfedit.envs.config import ConfigError


def _task(task_id: str, pairs: list[tuple[tuple, tuple]], tests: int = 1) -> ArcTask:
    made = [ArcPair(i, o) for i, o in pairs]
    return ArcTask(task_id, "training", tuple(made[:-tests]), tuple(made[-tests:]))


# Tiny grids keep sequences short: a step trains in well under a second.
FLIP = _task("flip0001", [(((1, 2),), ((2, 1),)), (((3, 4),), ((4, 3),)),
                          (((5, 6),), ((6, 5),)), (((7, 8),), ((8, 7),))])
CONST = _task("const001", [(((c,),), ((1,),)) for c in (2, 3, 4, 5)])
TWO_TESTS = _task("twotest1", [(((c, 0),), ((0, c),)) for c in (1, 2, 3, 4, 5)], tests=2)
BIG = _task("big00001", [(((c,) * 8,) * 8, ((9 - c,) * 8,) * 8) for c in (1, 2, 3, 4)])
DATASET = {t.id: t for t in (FLIP, CONST, TWO_TESTS, BIG)}
FAST = {"dataset": DATASET, "tasks": "all", "predict_max_tokens": 6}


def recipe(**fields) -> str:
    body = {"augmentations": [], "loss": "outputs", "learning_rate": 3e-3, "num_epochs": 2,
            "lora_rank": 8, "lora_alpha": 16}
    return json.dumps({**body, **fields})


@pytest.fixture()
def env(tiny_backend) -> ArcEnv:
    return ArcEnv(backend=tiny_backend, **FAST)


def test_check_env_passes(env) -> None:
    check_env(env, skip_render_check=True)


def test_gymnasium_make_and_spaces(tiny_backend) -> None:
    env = gymnasium.make("selfedit/ARC-v0", backend=tiny_backend, **FAST)
    obs, info = env.reset(seed=1, options={"task_id": "twotest1"})
    assert env.observation_space.contains(obs)
    assert info == {"task_id": "twotest1", "split": "training", "demonstrations": 3,
                    "tests": 2, "max_side": 2}
    assert "Example 3" in obs["prompt"] and '"augmentations"' in obs["prompt"]


def test_a_training_step_reports_everything_and_leaves_the_base_bit_identical(env) -> None:
    env.reset(seed=0, options={"task_id": "flip0001"})
    before = env.base_checksum()
    _, reward, terminated, truncated, info = env.step(recipe(augmentations=["rot180"]))
    assert terminated and not truncated and info["error"] is None
    assert env.base_checksum() == before
    assert reward in (0.0, 1.0) and reward == float(info["solved"])
    training = info["training"]
    # 3 demonstrations, each the query once; rot180 of a 1x2 row is the mirrored row.
    assert training["sequences"] == 6 and len(training["token_counts"]) == 6
    assert {e["augmentation"] for e in training["examples"]} == {"identity", "rot180"}
    assert info["update"]["optimizer_steps"] > 0 and info["update"]["loss_first"] is not None
    assert info["recipe"]["augmentations"] == ["rot180"]
    test = info["tests"][0]
    assert test["gold"] == [[8, 7]] and len(test["predictions"]) == 1
    assert set(info["timings"]) >= {"build_s", "train_s", "predict_s", "step_s"}


def test_outputs_only_sequences_are_prompt_target_pairs(env) -> None:
    """The loss-mask interface: (prompt, target) with the target exactly the query's output
    grid; 'all' gives one string, the same text joined."""
    env.reset(seed=0, options={"task_id": "flip0001"})
    _, _, _, _, outputs = env.step(recipe(loss="outputs"))
    env.reset(seed=0, options={"task_id": "flip0001"})
    _, _, _, _, every = env.step(recipe(loss="all"))
    pairs, texts = outputs["training"]["texts"], every["training"]["texts"]
    for (prompt, target), text, ex in zip(pairs, texts, outputs["training"]["examples"],
                                          strict=True):
        assert parse_grid(target) == FLIP.train[ex["query_index"]].output
        assert prompt.endswith("Output:" + env._prefix) or prompt.endswith("assistant\n")
        assert text == prompt + target
    # Masking the prompt changes what the loss averages over.
    assert outputs["update"]["loss_first"] != every["update"]["loss_first"]


def test_the_adapted_model_can_solve_a_task(smol_tokenizer) -> None:
    """End to end to reward 1: every output of this task is the 1x1 grid '1', which a LoRA
    on the tiny model learns in a few epochs with the loss on the outputs only."""
    import torch

    model = build_tiny_model(smol_tokenizer)
    # The tiny config makes EOS its padding token, whose embedding row (tied to the output
    # layer) is zero and frozen: EOS could never be predicted. SmolLM2's EOS row is trained.
    embed = model.model.embed_tokens
    with torch.no_grad():
        embed.weight[smol_tokenizer.eos_token_id].normal_(0, model.config.initializer_range)
    embed.padding_idx = None
    env = ArcEnv(backend=HFBackend(model, tokenizer=smol_tokenizer, device="cpu"), **FAST)
    env.reset(seed=0, options={"task_id": "const001"})
    _, before, _, _, info = env.step(recipe(num_epochs=0))
    assert before == 0.0 and info["tests"][0]["voted"] != [[[1]]]
    _, reward, _, _, info = env.step(recipe(learning_rate=1e-2, num_epochs=8))
    assert info["error"] is None and info["tests"][0]["predictions"][0]["reply"] == "1"
    assert reward == 1.0 and info["solved"] and info["tests"][0]["voted"] == [[[1]]]


@pytest.mark.parametrize("action, why", [
    ("{not json", "JSON"),
    (recipe(augmentations=["spin"]), "unknown augmentation"),
    (recipe(learning_rate=10.0), "learning_rate must be between"),
    (recipe(num_epochs=10_000), "num_epochs must be between"),
    (recipe(loss="inputs"), "loss must be"),
    (12345, "JSON object"),
])
def test_bad_recipes_get_the_penalty_never_an_exception(env, action, why) -> None:
    env.reset(seed=0)
    before = env.base_checksum()
    obs, reward, terminated, _, info = env.step(action)
    assert reward == env.config.invalid_reward and terminated
    assert why in info["error"] and env.observation_space.contains(obs)
    assert env.base_checksum() == before


def test_over_budget_recipes_are_rejected_before_training(tiny_backend) -> None:
    env = ArcEnv(backend=tiny_backend, max_train_tokens=500, **FAST)
    env.reset(seed=0, options={"task_id": "flip0001"})
    _, reward, _, _, info = env.step(recipe(augmentations=["basic"], num_epochs=3))
    assert reward == -0.1 and "over budget" in info["error"] and "max_train_tokens" in info["error"]
    short = ArcEnv(backend=tiny_backend, max_seq_tokens=20, **FAST)
    short.reset(seed=0, options={"task_id": "flip0001"})
    _, reward, _, _, info = short.step(recipe())
    assert reward == -0.1 and "max_seq_tokens" in info["error"]


def test_budget_cuts_are_reported_and_leave_the_base_intact(tiny_backend) -> None:
    env = ArcEnv(backend=tiny_backend, max_sequences=4, max_train_seconds=1e-6, **FAST)
    env.reset(seed=0, options={"task_id": "flip0001"})
    before = env.base_checksum()
    _, reward, _, _, info = env.step(recipe(augmentations=["basic"], num_epochs=5))
    assert info["error"] is None and reward in (0.0, 1.0)
    assert info["training"]["sequences"] == 4
    assert any("max_sequences" in note for note in info["budget"])
    assert any("time budget" in note for note in info["budget"])
    assert env.base_checksum() == before


class FailingBackend(HFBackend):
    """Fault injection: generation fails inside the adapted block (e.g. out of memory)."""

    def generate(self, prompts, **kwargs):  # noqa: ANN001, ANN003
        raise RuntimeError("simulated failure while predicting")


def test_a_failure_inside_the_update_block_restores_the_base(smol_tokenizer) -> None:
    backend = FailingBackend(build_tiny_model(smol_tokenizer), tokenizer=smol_tokenizer,
                             device="cpu")
    env = ArcEnv(backend=backend, verify_base_every=1, **FAST)
    env.reset(seed=0, options={"task_id": "flip0001"})
    before = env.base_checksum()
    flags = [p.requires_grad for p in backend.model.parameters()]
    _, reward, _, _, info = env.step(recipe())
    assert reward == -0.1 and "simulated failure" in info["error"]
    assert env.base_checksum() == before
    assert [p.requires_grad for p in backend.model.parameters()] == flags
    assert "train_s" in info["timings"]  # the phases before the failure were timed


def test_steps_are_deterministic_for_a_seed(smol_tokenizer) -> None:
    infos = []
    for _ in range(2):
        backend = HFBackend(build_tiny_model(smol_tokenizer), tokenizer=smol_tokenizer,
                            device="cpu")
        env = ArcEnv(backend=backend, **FAST)
        env.reset(seed=7, options={"task_id": "twotest1"})
        infos.append(env.step(recipe(augmentations=["flip_cols"], color_permutations=1))[4])
    a, b = infos
    assert a["update"]["losses"] == b["update"]["losses"]
    assert a["training"]["texts"] == b["training"]["texts"]
    assert [t["predictions"] for t in a["tests"]] == [t["predictions"] for t in b["tests"]]


def test_voting_over_inference_augmentations(tiny_backend) -> None:
    env = ArcEnv(backend=tiny_backend, inference_augmentations=["basic"], attempts=2, **FAST)
    env.reset(seed=0, options={"task_id": "twotest1"})
    _, _, _, _, info = env.step(recipe(num_epochs=0))
    for test in info["tests"]:
        assert len(test["predictions"]) == 8  # identity + the 7 basic transforms
        assert len(test["voted"]) <= 2
    assert vote([((1,),), None, ((2,),), ((2,),)], 1) == [((2,),)]


def test_tasks_that_cannot_fit_the_context_are_excluded(tiny_backend) -> None:
    assert not ArcEnv(backend=tiny_backend, **FAST).excluded
    env = ArcEnv(backend=tiny_backend, context_tokens=300, **FAST)
    assert list(env.excluded) == ["big00001"] and "prompt + answer need" in env.excluded["big00001"]
    assert [t.id for t in env.tasks] == ["flip0001", "const001", "twotest1"]
    with pytest.raises(ConfigError, match="selects no task"):
        ArcEnv(backend=tiny_backend, context_tokens=100, **FAST)
    with pytest.raises(ConfigError, match="did you mean"):
        ArcEnv(backend=tiny_backend, dataset=DATASET, tasks="flip0002")


def test_build_training_set_subsamples_with_the_rng(tiny_backend) -> None:
    import numpy as np

    rec, _ = parse_recipe(recipe(augmentations=["basic"], loss="all"))
    kwargs = {"sep": "", "format_prompt": str, "count_tokens": lambda t: len(t),
              "max_sequences": 5, "max_seq_tokens": 10_000}
    a = build_training_set(FLIP, rec, rng=np.random.default_rng(0), **kwargs)
    b = build_training_set(FLIP, rec, rng=np.random.default_rng(0), **kwargs)
    assert len(a.sequences) == 5 and a.sequences == b.sequences
    assert all(isinstance(s, str) and s.endswith(grid_text(e.query.output))
               for s, e in zip(a.sequences, a.examples, strict=True))
