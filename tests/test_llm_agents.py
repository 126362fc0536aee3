"""LLM template writers against the real env with a tiny model built in the test."""

from __future__ import annotations

import numpy as np
import pytest

from selfedit.agents.llm import ArchiveAgent, MetaPromptAgent, NoveltyArchiveAgent
from selfedit.agents.registry import make_agent
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.templates import Hyperparameters, Template

FAST = {"completion_max_tokens": 12, "answer_max_tokens": 6, "baseline_cache": None}
QUICK = {"max_new_tokens": 24, "max_retries": 4}


@pytest.fixture()
def env(tiny_backend):
    return SelfEditEnv(backend=tiny_backend, **FAST)


def _loop(env, agent, steps: int) -> list[dict]:
    infos = []
    for i in range(steps):
        obs, info = env.reset(seed=i)
        action = agent.act(obs, info)
        _, reward, _, _, info = env.step(action)
        agent.observe(action, reward, info)
        infos.append(info)
    return infos


def test_metaprompt_agent_proposals_and_counts(env) -> None:
    agent = MetaPromptAgent(env.backend, seed=0, **QUICK)
    infos = _loop(env, agent, 3)
    assert agent.counts["proposals"] == 3
    assert agent.counts["attempts"] >= 3
    # Even a random tiny model's replies become valid templates: the reply starts inside
    # the JSON object, truncated objects are closed, and bad replies are retried.
    assert all(i["error"] is None for i in infos), [i["error"] for i in infos]
    assert agent.counts["gave_up"] == 0
    assert agent.counts["attempts"] == 3 + agent.counts["invalid_outputs"]


def test_batched_proposals_use_one_generate_call_per_setting(env) -> None:
    agent = MetaPromptAgent(env.backend, seed=1, explore_ratio=0.0, max_retries=0,
                            max_new_tokens=8)
    calls = []
    original = env.backend.generate

    def counting(prompts, **kw):
        calls.append(len(prompts))
        return original(prompts, **kw)

    env.backend.generate = counting
    obs, info = env.reset(seed=0)
    out = agent.act_batch([obs] * 4, [info] * 4)
    assert len(out) == 4 and calls == [4]


def test_archive_agent_seeds_with_measured_baselines_then_shows_best_and_worst(env) -> None:
    agent = ArchiveAgent(env.backend, seed=0, seed_baselines=["passage", "no_training"],
                         **QUICK)
    infos = _loop(env, agent, 4)
    assert all(i["error"] is None for i in infos)
    assert infos[0]["template"]["include_passage"] is True  # the seeds come first
    assert infos[1]["template"]["hyperparameters"]["num_epochs"] == 0
    assert len(agent.archive) >= 2
    best, worst = agent.elites()
    prompt = agent.prompt({})
    assert "Best:" in prompt and "Worst:" in prompt
    for record in best + worst:
        assert f"accuracy {record.accuracy:.3f}" in prompt
    # The scores shown are the ones measured in this run.
    measured = {round(i["accuracy"], 6) for i in infos if i["error"] is None}
    assert {round(r.accuracy, 6) for r in agent.archive.values()} <= measured


def test_archive_state_round_trip(env) -> None:
    agent = ArchiveAgent(env.backend, seed=3, seed_baselines=["passage"], **QUICK)
    _loop(env, agent, 1)
    clone = ArchiveAgent(env.backend, seed=99, seed_baselines=[], **QUICK)
    clone.load_state_dict(agent.state_dict())
    assert clone.prompt({}) == agent.prompt({})
    assert clone.rng.integers(1000) == agent.rng.integers(1000)


class _Embedder:
    """Hyperparameters only: makes 'near-duplicate' exact and checkable by hand."""

    def embed(self, templates):
        return np.array([[t["hyperparameters"]["lora_rank"] / 64,
                          t["hyperparameters"]["num_epochs"] / 20] for t in templates])


def _t(rank: int, epochs: int) -> Template:
    return Template(f"Write facts ({rank}, {epochs}).",
                    Hyperparameters(lora_rank=rank, num_epochs=epochs), include_passage=True)


def test_novelty_prefers_a_novel_template_over_a_near_duplicate(env) -> None:
    agent = NoveltyArchiveAgent(env.backend, embedder=_Embedder(), seed_baselines=[], show=2)
    for template, acc in [(_t(32, 10), 0.5), (_t(32, 11), 0.5), (_t(4, 2), 0.5)]:
        info = {"error": None, "template": template.to_dict(), "accuracy": acc,
                "normalized_gain": acc}
        agent.observe(template, acc, info)
    # Equal scores: the prompt's two elites are the two *different* ideas.
    best, _ = agent.elites()
    ranks = sorted(r.template["hyperparameters"]["lora_rank"] for r in best)
    assert ranks == [4, 32]
    # A candidate next to an archived template loses to one in an empty region.
    assert agent.choose([_t(32, 10), _t(64, 20)]).hyperparameters.lora_rank == 64


def test_novelty_agent_runs_against_the_env(env) -> None:
    agent = NoveltyArchiveAgent(env.backend, seed=0, seed_baselines=["passage"], candidates=2,
                                **QUICK)
    infos = _loop(env, agent, 3)
    assert all(i["error"] is None for i in infos)
    assert len(agent.archive) >= 2


def test_registry_builds_llm_agents_in_self_mode(env) -> None:
    agent = make_agent({"type": "archive", "name": "arch", "seed": 2, "show": 1}, env)
    assert isinstance(agent, ArchiveAgent) and agent.backend is env.backend
    assert agent.name == "arch"
