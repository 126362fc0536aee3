"""Fixed human templates: the five strategies the papers compare, in the project's words.

Each uses SEAL's hyperparameters (rank 32, alpha 64, lr 1e-3, 10 epochs; arXiv 2506.10943
sec. 4) unless overridden. The synthetic-data templates also train on the passage itself, as
SEAL's "passage + synthetic data" rows do.
"""

from __future__ import annotations

from typing import Any

from selfedit.agents.base import Action, BaseAgent
from selfedit.envs.library import HUMAN_BASELINES, human_baseline  # re-exported
from selfedit.envs.templates import Template

__all__ = ["HUMAN_BASELINES", "FixedTemplateAgent", "human_baseline"]


class FixedTemplateAgent(BaseAgent):
    """Always emits the same template (a human baseline, or any template you give it)."""

    def __init__(self, template: Template | str, name: str | None = None) -> None:
        self.template = human_baseline(template) if isinstance(template, str) else template
        self.name = name or self.template.name or "fixed"

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        return self.template
