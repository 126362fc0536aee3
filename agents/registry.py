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

__all__ = ["AGENT_TYPES", "make_agent", "register_agent"]


def _fixed(spec: dict[str, Any]) -> Agent:
    allowed = {"type", "name", "template", "baseline", "hyperparameters"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} for a fixed agent; use {sorted(allowed)}"
        )
    try:
        if "template" in spec:
            template, _ = Template.from_dict(spec["template"])
        else:
            template = human_baseline(spec.get("baseline", ""), **spec.get("hyperparameters", {}))
    except (TemplateError, KeyError) as err:
        raise ConfigError(f"agent {spec.get('name', '?')}: {err}") from None
    return FixedTemplateAgent(template, name=spec.get("name"))


AGENT_TYPES: dict[str, Callable[[dict[str, Any]], Agent]] = {"fixed": _fixed}


def register_agent(type_name: str, factory: Callable[[dict[str, Any]], Agent]) -> None:
    """Make a new agent type available to configs (``{type: type_name, ...}``)."""
    AGENT_TYPES[type_name] = factory


def make_agent(spec: str | dict[str, Any]) -> Agent:
    """Build an agent from a config entry.

    >>> make_agent("passage").name
    'passage'
    >>> make_agent({"type": "fixed", "baseline": "implications", "name": "impl-5ep",
    ...             "hyperparameters": {"num_epochs": 5}}).template.hyperparameters.num_epochs
    5
    """
    if isinstance(spec, str):
        if spec not in HUMAN_BASELINES:
            raise ConfigError(
                f"unknown agent {spec!r}: use a baseline name ({', '.join(HUMAN_BASELINES)})"
                " or a mapping with 'type'"
            )
        return FixedTemplateAgent(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"an agent entry must be a name or a mapping, got {spec!r}")
    kind = spec.get("type", "fixed")
    if kind not in AGENT_TYPES:
        raise ConfigError(f"unknown agent type {kind!r}; known: {', '.join(AGENT_TYPES)}")
    return AGENT_TYPES[kind](spec)
