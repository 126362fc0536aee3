"""Fixed human templates: the five strategies the papers compare, in the project's words.

Each uses SEAL's hyperparameters (rank 32, alpha 64, lr 1e-3, 10 epochs; arXiv 2506.10943
sec. 4) unless overridden. The synthetic-data templates also train on the passage itself, as
SEAL's "passage + synthetic data" rows do.
"""

from __future__ import annotations

from typing import Any

from selfedit.agents.base import Action, BaseAgent
from selfedit.envs.templates import Hyperparameters, Template, TemplateError

__all__ = ["HUMAN_BASELINES", "FixedTemplateAgent", "human_baseline"]

_SEAL = Hyperparameters()

HUMAN_BASELINES: dict[str, Template] = {
    "implications": Template(
        "Read the passage and write down what follows from it: each fact it states and the"
        " consequences those facts imply. Make every implication one complete sentence that"
        " names its subject, so it makes sense on its own.",
        _SEAL,
        include_passage=True,
        name="implications",
    ),
    "rewrite": Template(
        "Rewrite the passage in your own words, then again in a different order, keeping every"
        " name, number and date exactly as written. Separate the rewrites with a blank line.",
        _SEAL,
        include_passage=True,
        name="rewrite",
    ),
    "self_qa": Template(
        "Write question and answer pairs that together cover every fact in the passage. Put"
        " each pair on one line as 'Question: ... Answer: ...' and name the passage's subject"
        " in every question.",
        _SEAL,
        include_passage=True,
        name="self_qa",
    ),
    "passage": Template("", _SEAL, include_passage=True, name="passage"),
    "no_training": Template(
        "", Hyperparameters(num_epochs=0), include_passage=False, name="no_training"
    ),
}


def human_baseline(name: str, **hyperparameters: Any) -> Template:
    """A human baseline by name, optionally with some hyperparameters replaced."""
    if name not in HUMAN_BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose from {', '.join(HUMAN_BASELINES)}")
    base = HUMAN_BASELINES[name]
    if not hyperparameters:
        return base
    merged = {**base.hyperparameters.to_dict(), **hyperparameters}
    hp, report = Hyperparameters.from_dict(merged)
    if report["ignored_keys"]:
        raise TemplateError(f"unknown hyperparameters {report['ignored_keys']}")
    return Template(base.data_creation_instruction, hp, base.include_passage, base.name)


class FixedTemplateAgent(BaseAgent):
    """Always emits the same template (a human baseline, or any template you give it)."""

    def __init__(self, template: Template | str, name: str | None = None) -> None:
        self.template = human_baseline(template) if isinstance(template, str) else template
        self.name = name or self.template.name or "fixed"

    def act(self, observation: dict[str, Any], info: dict[str, Any]) -> Action:
        return self.template
