"""Agents: policies that emit self-edit templates for the env."""

from selfedit.agents.base import Action, Agent, BaseAgent
from selfedit.agents.fixed import HUMAN_BASELINES, FixedTemplateAgent, human_baseline

__all__ = [
    "HUMAN_BASELINES",
    "Action",
    "Agent",
    "BaseAgent",
    "FixedTemplateAgent",
    "human_baseline",
]
