"""Prompt texts the env shows models, in the project's own words.

Three prompts matter:
- the *meta-prompt* a template-writing policy sees (the observation in template mode);
- the *completion prompt* that turns a template's instruction plus one passage into the
  text the self model completes into training sequences;
- the *answer prompt* the adapted model answers each question with, passage not shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from selfedit.envs.templates import HP_RANGES, OPERATOR_HYPERPARAMETERS, hyperparameters_class

__all__ = [
    "ANSWER_PROMPT",
    "COMPLETION_PROMPT",
    "archive_section",
    "meta_prompt",
    "operator_section",
    "self_edit_prompt",
    "self_edit_prompt_many",
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


def _ranges(ranges: dict[str, tuple[float, float]] = HP_RANGES, indent: str = "  ") -> str:
    lines = []
    for key, (low, high) in ranges.items():
        lines.append(f"{indent}- {key}: {low:g} to {high:g}")
    return "\n".join(lines)


# What each update operator does, in the words a template writer reads (issue 16).
_OPERATOR_TEXT = {
    "lora": "a fresh LoRA adapter (small low-rank weights added to every projection) is"
            " trained and then discarded",
    "full": "full fine-tuning: the model's own weights are trained (last_layers > 0 trains"
            " only the last N blocks), then restored",
    "svd": "singular-value fine-tuning: every weight matrix keeps its singular vectors and a"
           " trained scale multiplies each singular value (svd_components > 0 scales only the"
           " N largest)",
}


def operator_section(operators: Sequence[str], default_operator: str = "lora") -> str:
    """How a template chooses its update operator: each allowed one, its hyperparameters.

    >>> print(operator_section(["lora", "svd"]).splitlines()[0])
    How the model is updated: choose with "update_operator" (default "lora").
    """
    lines = [f'How the model is updated: choose with "update_operator" (default'
             f' "{default_operator}").']
    for name in operators:
        cls = OPERATOR_HYPERPARAMETERS[name]
        lines.append(f'- "{name}": {_OPERATOR_TEXT[name]}. Hyperparameters:')
        lines.append(_ranges(cls.RANGES, indent="    "))
    lines.append('Put "update_operator" beside "hyperparameters" and give the hyperparameters'
                 " of the operator you choose; keys of another operator are ignored.")
    return "\n".join(lines)


def _pooled_text(n: int) -> str:
    return (f"Several passages at once. {n} passages arrive together: the training text"
            f" written for each of them is pooled into one update, and the updated model must"
            f" answer the questions of all {n} passages without seeing them. Your score is the"
            " fraction of all those questions answered correctly.")


def meta_prompt(archive: str = "", *, operators: Sequence[str] | None = None,
                default_operator: str = "lora", pooled: int = 0) -> str:
    """The observation of a template-writing policy: what a template is and how it is scored.

    ``operators``: the update operators a template may choose (None: LoRA only, the text
    says nothing about operators); ``pooled``: the number of passages one update learns
    (SEAL's continued-pretraining setting; 0 = one passage per update).
    """
    if operators is not None:
        return _meta_prompt_operators(archive, operators, default_operator, pooled)
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
    if pooled:
        text += "\n\n" + _pooled_text(pooled)
    if archive:
        text += "\n\n" + archive
    return text


def _meta_prompt_operators(archive: str, operators: Sequence[str], default_operator: str,
                           pooled: int) -> str:
    example = {
        "data_creation_instruction": "<instruction, written without knowing the passage>",
        "update_operator": default_operator,
        "hyperparameters": hyperparameters_class(default_operator)().to_dict(),
        "include_passage": True,
    }
    text = (
        "You are designing a self-edit template: a recipe a language model uses to teach "
        "itself a new passage.\n\n"
        "How it is scored. A passage you will not see arrives later. A copy of the model "
        "reads the passage together with your data-creation instruction and writes training "
        "text, one item per line. The model is then updated on that text with next-token "
        "prediction, by the update operator and with the hyperparameters you choose, and "
        "must answer questions about the passage without seeing it. Your score is the "
        "fraction answered correctly, so the training text should make the model remember "
        "the passage's facts in a form that lets it recall them.\n\n"
        "Reply with one JSON object and nothing else:\n"
        f"{json.dumps(example)}\n\n"
        f"{operator_section(operators, default_operator)}\n"
        "include_passage (true or false) also trains on the passage itself."
    )
    if pooled:
        text += "\n\n" + _pooled_text(pooled)
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


def self_edit_prompt_many(passages: Sequence[tuple[str, str]], *,
                          operators: Sequence[str] | None = None,
                          default_operator: str = "lora") -> str:
    """Self-edit mode for one or several (pooled) passages, optionally with an operator choice.

    One passage and no ``operators``: exactly :func:`self_edit_prompt`.

    >>> self_edit_prompt_many([("T", "C")]) == self_edit_prompt("T", "C")
    True
    """
    if len(passages) == 1 and operators is None:
        return self_edit_prompt(*passages[0])
    many = len(passages) > 1
    what = (f"the {len(passages)} passages below (one update learns them all)" if many
            else "the passage below")
    text = (
        f"Write training data that will teach a language model {what}, so that it can answer"
        f" questions about {'them' if many else 'it'} without seeing"
        f" {'them' if many else 'it'}. Reply with a JSON list of strings, or an object"
        ' {"sequences": [...], "hyperparameters": {...}'
        + (', "update_operator": "..."' if operators else "") + "}."
    )
    if operators:
        text += "\n\n" + operator_section(operators, default_operator)
    for title, context in passages:
        text += f"\n\nTitle: {title}\nPassage: {context}"
    return text
