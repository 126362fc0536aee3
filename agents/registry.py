"""Build agents from config entries, so which agent runs is one config key.

An entry is a baseline name (``implications``) or a mapping with ``type`` and its
arguments, e.g. ``{type: fixed, name: short, template: {...}}`` or
``{type: fixed, baseline: passage, hyperparameters: {num_epochs: 5}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selfedit.agents.base import Agent
from selfedit.agents.fixed import HUMAN_BASELINES, FixedTemplateAgent, human_baseline
from selfedit.envs.config import ConfigError
from selfedit.envs.templates import Template, TemplateError

__all__ = ["AGENT_KEYS", "AGENT_TYPES", "check_agent_spec", "make_agent", "register_agent"]


def _fixed(spec: dict[str, Any], env: Any = None) -> Agent:
    try:
        if "template" in spec:
            template, _ = Template.from_dict(spec["template"])
        else:
            template = human_baseline(spec.get("baseline", ""), **spec.get("hyperparameters", {}))
    except (TemplateError, KeyError) as err:
        raise ConfigError(f"agent {spec.get('name', '?')}: {err}") from None
    return FixedTemplateAgent(template, name=spec.get("name"))


# A factory takes the config entry and the env the agent will act in (for agents that need
# its model, e.g. an LLM template writer in self mode, or its corpus size).
AgentFactory = Callable[[dict[str, Any], Any], Agent]
AGENT_TYPES: dict[str, AgentFactory] = {"fixed": _fixed}
AGENT_KEYS: dict[str, set[str]] = {"fixed": {"template", "baseline", "hyperparameters"}}


def register_agent(type_name: str, factory: AgentFactory, keys: set[str]) -> None:
    """Make a new agent type available to configs (``{type: type_name, ...}``).

    ``keys`` are the config keys the type accepts besides ``type`` and ``name``; they are
    checked by :func:`check_agent_spec` before any model loads.
    """
    AGENT_TYPES[type_name] = factory
    AGENT_KEYS[type_name] = set(keys)


def check_agent_spec(spec: str | dict[str, Any]) -> str:
    """Validate a config entry without building anything; return the agent's name."""
    if isinstance(spec, str):
        if spec not in HUMAN_BASELINES:
            raise ConfigError(
                f"unknown agent {spec!r}: use a baseline name ({', '.join(HUMAN_BASELINES)})"
                " or a mapping with 'type'"
            )
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"an agent entry must be a name or a mapping, got {spec!r}")
    kind = spec.get("type", "fixed")
    if kind not in AGENT_TYPES:
        raise ConfigError(f"unknown agent type {kind!r}; known: {', '.join(AGENT_TYPES)}")
    allowed = AGENT_KEYS[kind] | {"type", "name"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} for a {kind} agent; use {sorted(allowed)}"
        )
    if kind == "fixed" and "name" not in spec:
        return spec.get("baseline") or spec.get("template", {}).get("name") or "fixed"
    return str(spec.get("name", kind))


def make_agent(spec: str | dict[str, Any], env: Any = None) -> Agent:
    """Build an agent from a config entry (``env``: the env it will act in, if it needs it).

    >>> make_agent("passage").name
    'passage'
    >>> make_agent({"type": "fixed", "baseline": "implications", "name": "impl-5ep",
    ...             "hyperparameters": {"num_epochs": 5}}).template.hyperparameters.num_epochs
    5
    """
    check_agent_spec(spec)
    if isinstance(spec, str):
        return FixedTemplateAgent(spec)
    return AGENT_TYPES[spec.get("type", "fixed")](spec, env)


# --- LLM template writers ---
_LLM_KEYS = {"model", "explore_ratio", "exploit_temperature", "explore_temperature",
             "max_retries", "max_new_tokens", "prefix_json", "seed"}


def _llm_agent(cls_name: str) -> AgentFactory:
    def factory(spec: dict[str, Any], env: Any) -> Agent:
        from selfedit.agents import llm

        kwargs = {k: v for k, v in spec.items() if k not in ("type", "model")}
        if spec.get("model"):  # separate mode: the policy is another model
            from selfedit.envs.backend import HFBackend

            backend = HFBackend(spec["model"])
        elif env is not None:  # self mode: the env's own model writes the templates
            backend = env.backend
        else:
            raise ConfigError(f"a {spec['type']} agent needs an env or a 'model' key")
        try:
            return getattr(llm, cls_name)(backend, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"agent {spec.get('name', spec['type'])}: {err}") from None

    return factory


register_agent("metaprompt", _llm_agent("MetaPromptAgent"), _LLM_KEYS)
register_agent("archive", _llm_agent("ArchiveAgent"), _LLM_KEYS | {"show", "seed_baselines"})
register_agent("novelty", _llm_agent("NoveltyArchiveAgent"),
               _LLM_KEYS | {"show", "seed_baselines", "novelty_weight", "k", "candidates"})


# --- bandit agents ---
from selfedit.agents import bandits as _bandits  # noqa: E402 - kept inside this block

register_agent("ucb1", _bandits.ucb1_from_spec, keys=_bandits.UCB1_KEYS)
register_agent("thompson", _bandits.thompson_from_spec, keys=_bandits.THOMPSON_KEYS)
register_agent("evolution", _bandits.evolution_from_spec, keys=_bandits.EVOLUTION_KEYS)
# --- end bandit agents ---
