"""Bandit and evolution agents: the search logic on synthetic rewards, then the real env."""

from __future__ import annotations

import doctest
import json
from collections import Counter

import numpy as np
import pytest

import selfedit.agents.bandits as bandits
from selfedit.agents import HUMAN_BASELINES
from selfedit.agents.bandits import (
    EvolutionAgent,
    Instruction,
    LibraryAgent,
    TemplateLibrary,
    ThompsonAgent,
    UCB1Agent,
)
from selfedit.agents.registry import check_agent_spec, make_agent
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv

AGENTS = [UCB1Agent, ThompsonAgent, EvolutionAgent]

# 3 instructions x 2 ranks x 2 learning rates x 1 epoch count = 12 arms.
SMALL = TemplateLibrary.from_baselines(
    ["implications", "rewrite", "self_qa"], ranks=[8, 32], learning_rates=[1e-4, 1e-3],
    epochs=[3],
)
BEST = (1, 1, 1, 0)

def synthetic_reward(arm: tuple[int, ...], rng: np.random.Generator, best=BEST) -> float:
    """Separable: 0.8 at the best arm, 0.25 less per wrong coordinate, Gaussian noise 0.1."""
    wrong = sum(a != b for a, b in zip(arm, best, strict=True))
    return 0.8 - 0.25 * wrong + float(rng.normal(0.0, 0.1))


def play(agent: LibraryAgent, steps: int, rng: np.random.Generator, best=BEST) -> list[tuple]:
    arms = []
    for _ in range(steps):
        template = agent.act({}, {})
        arm = agent.library.arm_of(template)
        assert arm is not None
        arms.append(arm)
        agent.observe(template, synthetic_reward(arm, rng, best), {})
    return arms


def test_module_doctests() -> None:
    result = doctest.testmod(bandits, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- the library ------------------------------------------------------------------------
def test_default_library_is_the_four_training_baselines() -> None:
    lib = TemplateLibrary()
    assert [x.name for x in lib.instructions] == ["implications", "rewrite", "self_qa", "passage"]
    assert lib.dims == (4, 4, 4, 3) and lib.n_arms == 192
    # SEAL's setting is one of its arms: the implications baseline maps onto it.
    arm = lib.arm_of(HUMAN_BASELINES["implications"])
    assert arm == (0, 2, 2, 2)
    assert lib.template(arm).to_dict()["hyperparameters"] == (
        HUMAN_BASELINES["implications"].hyperparameters.to_dict()
    )


def test_every_arm_round_trips() -> None:
    lib = TemplateLibrary(gradient_accumulation_steps=[1, 4])
    assert lib.axes[-1] == "gradient_accumulation_steps" and lib.n_arms == 384
    seen = set()
    for k, arm in enumerate(lib.arms()):
        assert lib.index(arm) == k and lib.arm(k) == arm
        template = lib.template(arm)
        assert template.hyperparameters.lora_alpha == 2 * template.hyperparameters.lora_rank
        assert lib.arm_of(template) == arm
        assert lib.arm_of(template.to_json()) == arm  # as an LLM would write it
        seen.add(template.name)
    assert len(seen) == lib.n_arms  # names tell arms apart in logs


def test_actions_outside_the_library_have_no_arm() -> None:
    lib = TemplateLibrary()
    off = HUMAN_BASELINES["rewrite"].to_dict()
    off["hyperparameters"]["learning_rate"] = 5e-4
    assert lib.arm_of(off) is None
    alpha = HUMAN_BASELINES["rewrite"].to_dict()
    alpha["hyperparameters"]["lora_alpha"] = 32  # rank 32 with another alpha
    assert lib.arm_of(alpha) is None
    assert lib.arm_of("not a template") is None
    assert lib.arm_of(HUMAN_BASELINES["no_training"]) is None
    with pytest.raises(ValueError, match="one index per axis"):
        lib.template((0, 0, 0, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora_ranks": [8, 512]}, "lora_ranks: lora_rank must be between 1 and 256, got 512"),
        ({"learning_rates": [0.5]}, "learning_rate must be between"),
        ({"num_epochs": [2.5]}, "num_epochs must be a whole number, got 2.5"),
        ({"num_epochs": []}, "num_epochs: give at least one value"),
        ({"lora_ranks": [8, 8]}, "values must be distinct"),
        ({"lora_ranks": 8}, "lora_ranks must be a list"),
        ({"lora_alpha_ratio": 100.0, "lora_ranks": [64]}, "lower the ratio or the rank"),
        ({"lora_dropout": 0.95}, "lora_dropout must be between 0.0 and 0.9"),
        ({"instructions": ["implications", "nope"]}, "unknown instruction 'nope'"),
        ({"instructions": ["no_training"]}, "nothing to train on"),
        ({"instructions": []}, "at least one instruction"),
    ],
)
def test_library_validation_says_what_to_fix(kwargs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TemplateLibrary(**kwargs)


def test_custom_instruction() -> None:
    lib = TemplateLibrary(instructions=[{"name": "facts", "data_creation_instruction":
                                         "List every fact.", "include_passage": False}],
                          lora_ranks=[8], learning_rates=[1e-3], num_epochs=[2])
    template = lib.template((0, 0, 0, 0))
    assert template.data_creation_instruction == "List every fact."
    assert not template.include_passage and lib.instructions[0] == Instruction(
        "facts", "List every fact.", False)


# -- search on a synthetic reward --------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "steps", "min_share"),
    [(UCB1Agent, 400, 0.3), (ThompsonAgent, 200, 0.6), (EvolutionAgent, 200, 0.35)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concentrates_on_the_best_arm(cls, steps: int, min_share: float, seed: int) -> None:
    agent = cls(SMALL, seed=seed)
    arms = play(agent, steps, np.random.default_rng(100 + seed))
    assert agent.best_arm() == BEST
    assert Counter(arms).most_common(1)[0][0] == BEST
    late = arms[-100:]
    # Uniform play would give the best arm 1/12 of the late proposals.
    assert late.count(BEST) / len(late) >= min_share


def test_evolution_climbs_the_full_library() -> None:
    lib = TemplateLibrary()  # 192 arms: too many to try each, one mutation at a time
    best = (2, 1, 2, 2)
    agent = EvolutionAgent(lib, population=4, seed=0)
    arms = play(agent, 200, np.random.default_rng(7), best=best)
    assert agent.best_arm() == best
    assert len(set(arms)) < lib.n_arms / 2  # it searched locally, not exhaustively
    assert arms[-50:].count(best) >= 15


def test_ucb1_plays_every_arm_once_in_a_seeded_order() -> None:
    first = play(UCB1Agent(SMALL, seed=0), SMALL.n_arms, np.random.default_rng(0))
    again = play(UCB1Agent(SMALL, seed=0), SMALL.n_arms, np.random.default_rng(0))
    other = play(UCB1Agent(SMALL, seed=1), SMALL.n_arms, np.random.default_rng(0))
    assert sorted(first) == sorted(SMALL.arms())
    assert first == again and first != other


def test_ucb1_batch_spreads_over_arms_instead_of_repeating_one() -> None:
    agent = UCB1Agent(SMALL, seed=0)
    n = SMALL.n_arms
    batch = [SMALL.arm_of(a) for a in agent.act_batch([{}] * n, [{}] * n)]
    assert sorted(batch) == sorted(SMALL.arms())  # one of each before any result returns
    rng = np.random.default_rng(0)
    for template in agent.act_batch([{}] * n, [{}] * n):
        agent.observe(template, float(rng.uniform()), {})
    later = [SMALL.arm_of(a) for a in agent.act_batch([{}] * 3, [{}] * 3)]
    assert len(set(later)) > 1  # a pending pull shrinks its arm's bonus
    assert later[0] == SMALL.arm_of(agent.act({}, {}))  # the first equals a lone proposal


def test_evolution_fills_the_population_then_mutates_elites() -> None:
    agent = EvolutionAgent(SMALL, population=4, mutation_rate=1.0, seed=3)
    rng = np.random.default_rng(0)
    first = play(agent, 4, rng)
    assert len(set(first)) == 4
    for _ in range(30):
        elite = [SMALL.arm(i) for i in agent.elite()]
        arm = SMALL.arm_of(agent.act({}, {}))
        # A child differs from some elite parent in exactly one coordinate.
        assert any(sum(a != b for a, b in zip(arm, e, strict=True)) == 1 for e in elite)
        agent.observe(SMALL.template(arm), synthetic_reward(arm, rng), {})


def test_thompson_learns_from_negative_penalties() -> None:
    lib = TemplateLibrary.from_baselines(["rewrite", "passage"], ranks=[8], learning_rates=[1e-3],
                                         epochs=[3])
    agent = ThompsonAgent(lib, seed=0)
    bad, ok = lib.template((0, 0, 0, 0)), lib.template((1, 0, 0, 0))
    for _ in range(5):
        agent.observe(bad, -0.1, {"error": "evaluation failed"})
        agent.observe(ok, 0.0, {"error": None})
    mean, _ = agent.posterior()
    assert mean[0] < mean[1] < 0.5  # the penalty is worse than zero accuracy
    picks = [lib.arm_of(agent.act({}, {})) for _ in range(50)]
    assert picks.count((1, 0, 0, 0)) > picks.count((0, 0, 0, 0))


@pytest.mark.parametrize("cls", AGENTS)
def test_state_dict_round_trip_resumes_exactly(cls) -> None:
    agent = cls(SMALL, seed=5)
    play(agent, 20, np.random.default_rng(1))
    state = json.loads(json.dumps(agent.state_dict()))  # plain JSON, as a run saves it
    resumed = cls(SMALL, seed=999)  # its own seed is overwritten by the state
    resumed.load_state_dict(state)
    assert play(resumed, 15, np.random.default_rng(2)) == play(agent, 15, np.random.default_rng(2))
    assert resumed.state_dict() == agent.state_dict()


def test_state_of_another_library_or_kind_is_refused() -> None:
    state = UCB1Agent(SMALL).state_dict()
    with pytest.raises(ValueError, match="another library"):
        UCB1Agent(TemplateLibrary()).load_state_dict(state)
    with pytest.raises(ValueError, match="'ucb1' agent given to a 'thompson'"):
        ThompsonAgent(SMALL).load_state_dict(state)


def test_observing_a_foreign_action_raises() -> None:
    agent = UCB1Agent(SMALL)
    with pytest.raises(ValueError, match="not an arm of its library"):
        agent.observe(HUMAN_BASELINES["passage"], 0.5, {})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "ucb1", "c": -1}, "agent ucb1: c .* must be a number >= 0"),
        ({"type": "evolution", "name": "evo", "mutation_rate": 2}, "agent evo: mutation_rate"),
        ({"type": "thompson", "noise_std": 0}, "noise_std must be a number > 0"),
        ({"type": "thompson", "ranks": [8, 1000]}, "ranks: lora_rank must be between 1 and 256"),
        ({"type": "ucb1", "instructions": "rewrite"}, "instructions must be a list"),
        ({"type": "ucb1", "seed": "zero"}, "seed must be a whole number"),
    ],
)
def test_registry_rejects_bad_values(spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_agent(spec)


def test_registry_builds_each_type() -> None:
    common = {"instructions": ["rewrite", "passage"], "ranks": [8, 16], "learning_rates": [1e-3],
              "epochs": [2], "seed": 4}
    ucb = make_agent({"type": "ucb1", "name": "u", "c": 0.5, **common})
    ts = make_agent({"type": "thompson", "noise_std": 0.1, **common})
    evo = make_agent({"type": "evolution", "population": 2, "mutation_rate": 0.3, **common})
    assert isinstance(ucb, UCB1Agent) and ucb.name == "u" and ucb.c == 0.5
    assert isinstance(ts, ThompsonAgent) and ts.name == "thompson" and ts.noise_std == 0.1
    assert isinstance(evo, EvolutionAgent) and evo.population == 2
    assert ucb.library.dims == (2, 2, 1, 1)
    assert ucb.act({}, {}).hyperparameters.num_epochs == 2
    with pytest.raises(ConfigError, match="unknown key"):
        check_agent_spec({"type": "ucb1", "population": 3})


# -- the real env ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ucb1", "thompson", "evolution"])
def test_agents_drive_the_real_env(tiny_backend, kind: str) -> None:
    env = SelfEditEnv(backend=tiny_backend, passages="0:2", baseline_cache=None,
                      completion_max_tokens=12, answer_max_tokens=6)
    spec = {"type": kind, "instructions": ["implications", "passage"], "ranks": [4, 8],
            "learning_rates": [1e-2], "epochs": [1], "seed": 0}
    if kind == "evolution":
        spec["population"] = 2
    agent = make_agent(spec, env)
    arms = []
    for episode in range(4):
        obs, reset_info = env.reset(seed=episode)
        action = agent.act(obs, reset_info)
        _, reward, terminated, _, info = env.step(action)
        assert info["error"] is None, info["error"]
        assert terminated and 0.0 <= reward <= 1.0
        arm = agent.library.arm_of(info["template"])  # the env evaluated exactly the arm
        assert arm == agent.library.arm_of(action)
        assert info["results"][0]["update"]["optimizer_steps"] >= 1  # a LoRA was trained
        agent.observe(action, reward, info)
        arms.append(arm)
    assert agent.t == 4 and sum(agent.pulls) == 4
    if kind == "ucb1":
        assert len(set(arms)) == 4  # the first round tries every arm once
    state = json.loads(json.dumps(agent.state_dict()))
    assert state["pulls"] == agent.pulls
