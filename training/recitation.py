"""How much does reciting the passage score? A check of each grader's honesty.

An adapted model often answers a question by reciting the passage it was trained on
(DESIGN.md). An RL agent will find any grader that rewards that. This report scores two
reciters against the gold answers, without any model:

- ``passage``: every answer is the whole passage;
- ``sentence``: every answer is the passage sentence that contains the gold answer (the
  best a reciter can do without understanding the question).

A grader that gives either a high score is gameable by recitation.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from selfedit.envs import grading
from selfedit.envs.corpus import Corpus, load_corpus

__all__ = ["recitation_scores", "recitation_report"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def _sentence_with(context: str, gold: str) -> str:
    for sentence in _SENTENCE.split(context):
        if gold in sentence:
            return sentence
    return context


def recitation_scores(corpus: Corpus, judge: Any = None) -> dict[str, dict[str, float]]:
    """Mean score per (reciter, grader) over every question of the corpus."""
    answers: dict[str, list[str]] = {"passage": [], "sentence": [], "gold": []}
    golds: list[list[str]] = []
    questions: list[str] = []
    for passage in corpus:
        for q in passage.questions:
            answers["passage"].append(passage.context)
            answers["sentence"].append(_sentence_with(passage.context, q.answers[0]))
            answers["gold"].append(q.answers[0])  # sanity row: a perfect answerer
            golds.append(list(q.answers))
            questions.append(q.question)
    out: dict[str, dict[str, float]] = {}
    for reciter, texts in answers.items():
        scores = {k: float(np.mean(v)) for k, v in grading.grade_all(texts, golds).items()}
        if judge is not None:
            scores["judge"] = float(np.mean(judge(texts, golds, questions=questions)))
        out[reciter] = scores
    return out


def recitation_report(source: str = "embedded", passages: str | None = None,
                      judge: Any = None) -> str:
    corpus = load_corpus(source).select(passages)
    scores = recitation_scores(corpus, judge=judge)
    graders = list(next(iter(scores.values())))
    lines = [
        f"Recitation scores on {corpus.name} ({len(corpus)} passages, "
        f"{corpus.num_questions} questions)",
        "",
        "| answer given | " + " | ".join(graders) + " |",
        "|---|" + "---:|" * len(graders),
    ]
    labels = {"passage": "the whole passage", "sentence": "the sentence holding the answer",
              "gold": "the gold answer (sanity)"}
    for reciter, row in scores.items():
        cells = " | ".join(f"{row[g]:.3f}" for g in graders)
        lines.append(f"| {labels[reciter]} | {cells} |")
    return "\n".join(lines)
