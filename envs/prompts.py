"""Prompt texts the env shows models, in the project's own words.

Three prompts matter:
- the *meta-prompt* a template-writing policy sees (the observation in template mode);
- the *completion prompt* that turns a template's instruction plus one passage into the
  text the self model completes into training sequences;
- the *answer prompt* the adapted model answers each question with, passage not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfedit.envs.templates import HP_RANGES

__all__ = [
    "ANSWER_PROMPT",
    "COMPLETION_PROMPT",
    "archive_section",
    "meta_prompt",
    "self_edit_prompt",
]

# {instruction}, {title}, {context} are filled per passage.
COMPLETION_PROMPT = (
    "{instruction}\n\n"
    "Title: {title}\n"
    "Passage: {context}\n\n"
    "Write one item per line."
)

# Asks for a short answer: long answers that recite the passage must not look correct.
ANSWER_PROMPT = "Answer in a few words, with no explanation.\nQuestion: {question}"


def _ranges() -> str:
    lines = []
    for key, (low, high) in HP_RANGES.items():
        lines.append(f"  - {key}: {low:g} to {high:g}")
    return "\n".join(lines)


def meta_prompt(archive: str = "") -> str:
    """The observation of a template-writing policy: what a template is and how it is scored."""
    text = (
        "You are designing a self-edit template: a recipe a language model uses to teach "
        "itself a new passage.\n\n"
        "How it is scored. A passage you will not see arrives later. A copy of the model "
        "reads the passage together with your data-creation instruction and writes training "
        "text, one item per line. A fresh LoRA adapter is trained on that text with "
        "next-token prediction using your hyperparameters. The adapted model must then "
        "answer questions about the passage without seeing it. Your score is the fraction "
        "answered correctly, so the training text should make the model remember the "
        "passage's facts in a form that lets it recall them.\n\n"
        "Reply with one JSON object and nothing else:\n"
        '{"data_creation_instruction": "<instruction, written without knowing the passage>",'
        ' "hyperparameters": {"lora_rank": 32, "lora_alpha": 64, "lora_dropout": 0.0,'
        ' "learning_rate": 0.001, "num_epochs": 10, "gradient_accumulation_steps": 1},'
        ' "include_passage": true}\n\n'
        "Allowed hyperparameter ranges:\n"
        f"{_ranges()}\n"
        "include_passage (true or false) also trains on the passage itself."
    )
    if archive:
        text += "\n\n" + archive
    return text


ArchiveEntry = tuple[dict[str, Any], dict[str, float]]  # (template, {"accuracy": ..., ...})


def archive_section(best: Sequence[ArchiveEntry], worst: Sequence[ArchiveEntry],
                    heading: str = "Best") -> str:
    """Past templates with their scores, for archive-conditioned template writing.

    >>> print(archive_section([({"x": 1}, {"accuracy": 0.5, "evaluations": 2})], []))
    Templates evaluated so far.
    Best:
    - accuracy 0.500, evaluations 2: {"x": 1}
    Write a new template that improves on the best ones.
    """
    import json

    def fmt(stats: dict[str, float]) -> str:
        parts = []
        for key, value in stats.items():
            label = key.replace("_", " ")
            parts.append(f"{label} {value:.3f}" if isinstance(value, float) else f"{label} {value}")
        return ", ".join(parts)

    def block(items: Sequence[ArchiveEntry]) -> str:
        return "\n".join(f"- {fmt(s)}: {json.dumps(t, ensure_ascii=False)}" for t, s in items)

    parts = ["Templates evaluated so far."]
    if best:
        parts.append(f"{heading}:\n" + block(best))
    if worst:
        parts.append("Worst:\n" + block(worst))
    parts.append("Write a new template that improves on the best ones.")
    return "\n".join(parts)


def self_edit_prompt(title: str, context: str) -> str:
    """Observation text in self-edit mode (SEAL's setting): the passage itself is shown."""
    return (
        "Write training data that will teach a language model the passage below, so that it "
        "can answer questions about it without seeing it. Reply with a JSON list of strings, "
        'or an object {"sequences": [...], "hyperparameters": {...}}.\n\n'
        f"Title: {title}\nPassage: {context}"
    )
