"""``selfedit graders --labels FILE``: how well each grader agrees with hand labels.

Issue 12, part 3. A labels file is JSON Lines, one item per line::

    {"id": "v001", "split": "tune", "passage_id": "embedded:16", "qi": 0,
     "question": "...", "golds": ["..."], "answer": "...", "label": 1, ...}

(``passage_key``, when present, is the key of the passage in the passages file, for a
passage whose text or questions changed since another item was drawn from it.)

``label`` is 1 (correct) or 0 (wrong) by a written rubric (results/grader_validity/rubric.md);
``split`` (optional) names the part an item belongs to, so that a grader tuned on one part
can be reported on another. An item read by two annotators carries their independent
readings, and, where they differ, the deciding reading::

    "annotations": [{"by": "annotator-1", "label": 1, "note": "..."},
                    {"by": "annotator-2", "label": 0, "note": "..."}],
    "adjudication": {"by": "adjudicator", "label": 1, "note": "..."}

``label`` is then their common reading, or the adjudicator's; the file is refused when it
is neither. The passages the items belong to are read from a JSON file
mapping ``passage_key`` (default ``passage_id``) to ``{"title", "context", "questions",
"golds"}`` (by default ``passages.json`` beside the labels), and every grader gets them as
the env hands them over
(``questions``, ``title``, ``context``, ``passage_golds``). An item whose passage is unknown
is graded with its own question and golds only.

For every grader the table reports agreement, precision and recall (of "correct" verdicts)
and Cohen's kappa with a 95% bootstrap interval, per split and over all items. The interval
resamples passages, not items (answers to one passage's questions are not independent), so
it says which kappa differences a split of this size can resolve at all. Where items carry
two readings, a row ``second reading`` scores the second annotator against the first the
same way: how far two careful people agree is the most any grader can be asked for.

Wiring: either ``add_subcommand(subparsers)`` plus ``main(args)``, or a command of the CLI's
own that calls :func:`graders_command` with the same options.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.envs import grading

__all__ = [
    "Agreement",
    "LabelledItem",
    "add_subcommand",
    "agreement",
    "cohen_kappa",
    "disagreements",
    "grade_items",
    "graders_command",
    "kappa_interval",
    "load_labels",
    "main",
    "validity_report",
]


@dataclass(frozen=True)
class LabelledItem:
    """One hand-labelled answer, with what the env would hand a grader about its passage."""

    id: str
    split: str
    question: str
    golds: list[str]
    answer: str
    label: int
    qi: int = 0
    passage: dict[str, Any] | None = None  # title, context, questions, golds
    source: str = ""
    cluster: str = ""  # the passage the item belongs to (the bootstrap resamples these)
    readings: tuple[int, ...] = ()  # the annotators' own labels, in order, when recorded


@dataclass(frozen=True)
class Agreement:
    """How a grader's 0/1 verdicts compare with labels."""

    n: int
    agreement: float
    precision: float
    recall: float
    kappa: float


def cohen_kappa(labels: Sequence[int], verdicts: Sequence[int]) -> float:
    """Cohen's kappa of two binary raters: agreement corrected for chance.

    kappa = (p_o - p_e) / (1 - p_e), where p_o is the observed agreement and p_e the
    agreement expected if both rated independently at their own rates of "1". p_e is 1 only
    when both raters give every item one and the same value; kappa is then 1.0 here (they
    agree perfectly, if trivially).

    Args:
        labels: The reference ratings, 0 or 1.
        verdicts: The other rater's ratings, 0 or 1, same order.

    Returns:
        Kappa in [-1, 1].

    Raises:
        ValueError: If the sequences differ in length, are empty, or hold values other
            than 0 and 1.

    >>> cohen_kappa([1, 1, 0, 0], [1, 1, 0, 0])
    1.0
    >>> cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1])
    -1.0
    >>> round(cohen_kappa([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 1]), 4)
    0.4667
    """
    if len(labels) != len(verdicts):
        raise ValueError(f"labels and verdicts differ in length: {len(labels)} vs {len(verdicts)}")
    if not labels:
        raise ValueError("kappa needs at least one item")
    if any(v not in (0, 1) for v in [*labels, *verdicts]):
        raise ValueError("kappa here is for binary ratings: every value must be 0 or 1")
    n = len(labels)
    observed = sum(a == b for a, b in zip(labels, verdicts, strict=True)) / n
    rate_a = sum(labels) / n
    rate_b = sum(verdicts) / n
    expected = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1 - expected)


def kappa_interval(labels: Sequence[int], verdicts: Sequence[int],
                   clusters: Sequence[str] | None = None, *, confidence: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`cohen_kappa`, resampling whole clusters.

    Items of one cluster (answers about one passage) are drawn together, so the interval
    does not pretend they are independent; without ``clusters`` every item is its own.
    Deterministic for a given ``seed``.

    Args:
        labels: The reference ratings, 0 or 1.
        verdicts: The other rater's ratings, 0 or 1, same order.
        clusters: A cluster name per item (default: one cluster per item).
        confidence: Coverage of the interval, in (0, 1).
        resamples: Bootstrap resamples, at least 100.
        seed: Seed of the resampling.

    Returns:
        (low, high).

    Raises:
        ValueError: For sequences of different lengths, no items, values other than 0/1,
            or ``confidence``/``resamples`` out of range.

    >>> labels = [1, 1, 0, 0, 0, 0, 1, 0, 0, 0] * 3
    >>> low, high = kappa_interval(labels, labels[:-1] + [1])
    >>> round(low, 3) < cohen_kappa(labels, labels[:-1] + [1]) <= high <= 1.0
    True
    >>> kappa_interval(labels, labels)
    (1.0, 1.0)
    """
    cohen_kappa(labels, verdicts)  # validates
    if clusters is not None and len(clusters) != len(labels):
        raise ValueError(f"clusters must name one cluster per item: {len(clusters)} for "
                         f"{len(labels)} items")
    if not 0 < confidence < 1 or resamples < 100:
        raise ValueError(f"confidence must be in (0, 1) and resamples >= 100, got "
                         f"{confidence} and {resamples}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(clusters if clusters is not None else map(str, range(len(labels)))):
        members[name].append(i)
    groups = [np.array(index) for index in members.values()]
    a, b = np.asarray(labels), np.asarray(verdicts)
    rng = np.random.default_rng(seed)
    kappas = []
    for _ in range(resamples):
        pick = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        kappas.append(cohen_kappa(a[pick].tolist(), b[pick].tolist()))
    tail = (1 - confidence) / 2
    low, high = np.quantile(kappas, [tail, 1 - tail])
    return float(low), float(high)


def agreement(labels: Sequence[int], verdicts: Sequence[int]) -> Agreement:
    """Agreement, precision and recall of the verdicts' "1"s, and kappa.

    Precision is 1.0 when the grader never says "correct" (it made no false claim);
    recall is 1.0 when no item is labelled correct.

    >>> agreement([1, 1, 0, 0], [1, 0, 0, 1])
    Agreement(n=4, agreement=0.5, precision=0.5, recall=0.5, kappa=0.0)
    """
    tp = sum(1 for a, b in zip(labels, verdicts, strict=True) if a == 1 and b == 1)
    predicted = sum(verdicts)
    positive = sum(labels)
    return Agreement(
        n=len(labels),
        agreement=sum(a == b for a, b in zip(labels, verdicts, strict=True)) / len(labels),
        precision=tp / predicted if predicted else 1.0,
        recall=tp / positive if positive else 1.0,
        kappa=cohen_kappa(labels, verdicts),
    )


def load_labels(path: str | Path, passages: str | Path | None = None) -> list[LabelledItem]:
    """Read a labels file (JSON Lines) and the passages its items refer to.

    Args:
        path: The labels file.
        passages: A JSON file ``{passage_id: {title, context, questions, golds}}``; default
            ``passages.json`` beside the labels file, when it exists.

    Returns:
        The items, in file order.

    Raises:
        ValueError: For a line that is not a JSON object with ``question``, ``golds``,
            ``answer`` and a 0/1 ``label`` (the message names the line).
    """
    path = Path(path)
    passages_path = Path(passages) if passages else path.with_name("passages.json")
    known: dict[str, Any] = {}
    if passages_path.is_file():
        known = json.loads(passages_path.read_text(encoding="utf-8"))
    elif passages is not None:
        raise FileNotFoundError(f"--passages {passages}: no such file")
    items = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                label = _binary(raw["label"], "label")
                golds = raw["golds"]
                if not isinstance(golds, list) or not all(isinstance(g, str) for g in golds):
                    raise ValueError("golds must be a list of strings")
                readings = _readings(raw, int(label))
                items.append(LabelledItem(
                    id=str(raw.get("id", number)), split=str(raw.get("split", "all")),
                    question=str(raw["question"]), golds=golds, answer=str(raw["answer"]),
                    label=int(label), qi=int(raw.get("qi", 0)),
                    passage=known.get(raw.get("passage_key", raw.get("passage_id", ""))),
                    source=str(raw.get("source", "")),
                    cluster=str(raw.get("passage_key", raw.get("passage_id", f"item {number}"))),
                    readings=readings,
                ))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}:{number}: not a labelled item ({err}); each line needs "
                    "question, golds (a list), answer and label (0 or 1)"
                ) from None
    if not items:
        raise ValueError(f"{path}: no labelled items")
    return items


def _binary(value: Any, what: str) -> int:
    if value not in (0, 1) or isinstance(value, bool):
        raise ValueError(f"{what} must be 0 or 1, got {value!r}")
    return int(value)


def _readings(raw: dict[str, Any], label: int) -> tuple[int, ...]:
    """The annotators' labels of one item, checked against its ``label`` (see the module)."""
    annotations = raw.get("annotations")
    if annotations is None:
        return ()
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise ValueError("annotations must be a list of objects with a label")
    readings = tuple(_binary(a.get("label"), f"annotation {k + 1}'s label")
                     for k, a in enumerate(annotations))
    adjudication = raw.get("adjudication")
    if adjudication is not None:
        if not isinstance(adjudication, dict):
            raise ValueError("adjudication must be an object with a label")
        decided = _binary(adjudication.get("label"), "the adjudication's label")
        if decided != label:
            raise ValueError(f"label {label} is not the adjudication's {decided}")
    elif len(set(readings)) > 1:
        raise ValueError(f"the annotations disagree ({list(readings)}) and no adjudication "
                         "decides; add an \"adjudication\" with the deciding label")
    elif readings and readings[0] != label:
        raise ValueError(f"label {label} is not the annotators' common reading {readings[0]}")
    return readings


def _grade_one(grader: grading.Grader, item: LabelledItem) -> float:
    """Grade one item the way the env grades its passage: the whole passage's questions in
    one call, this item's answer in its slot, the others empty (they are not looked at)."""
    passage = item.passage
    if passage is None or not 0 <= item.qi < len(passage["questions"]):
        return float(grader([item.answer], [item.golds], questions=[item.question])[0])
    answers = [""] * len(passage["questions"])
    answers[item.qi] = item.answer
    golds = [list(g) for g in passage["golds"]]
    scores = grader(answers, golds, questions=list(passage["questions"]),
                    title=passage["title"], context=passage["context"], passage_golds=golds)
    return float(scores[item.qi])


def grade_items(items: Sequence[LabelledItem],
                graders: dict[str, grading.Grader]) -> dict[str, list[int]]:
    """Each grader's 0/1 verdict per item (a score of 0.5 or more counts as "correct").

    A grader other than the cheap ones (an LLM judge: one model call per item) shows a
    progress bar on a terminal."""
    from tqdm.auto import tqdm

    verdicts = {}
    for name, grader in graders.items():
        slow = name not in grading.GRADERS
        verdicts[name] = [int(_grade_one(grader, item) >= 0.5)
                          for item in tqdm(items, desc=f"grading with {name}", unit="item",
                                           disable=None if slow else True)]
    return verdicts


def validity_report(items: Sequence[LabelledItem], graders: dict[str, grading.Grader],
                    *, title: str = "", verdicts: dict[str, list[int]] | None = None) -> str:
    """The Markdown table of every grader against the labels, per split and overall
    (``verdicts``: :func:`grade_items`' result when the caller already has it)."""
    verdicts = verdicts if verdicts is not None else grade_items(items, graders)
    splits = sorted({item.split for item in items})
    groups = [(s, [i for i, item in enumerate(items) if item.split == s]) for s in splits]
    if len(splits) > 1:
        groups.append(("all", list(range(len(items)))))
    lines = [title] if title else []
    positives = sum(item.label for item in items)
    lines += [
        f"{len(items)} labelled items ({positives} correct, {len(items) - positives} wrong);"
        " precision and recall are of the grader's \"correct\" verdicts; kappa's 95% interval"
        " is a bootstrap over the passages of the items (2,000 resamples, seed 0).",
        "",
        "| grader | items | agreement | precision | recall | Cohen's kappa | 95% CI |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, split: str, labels: list[int], said: list[int],
            clusters: list[str]) -> str:
        a = agreement(labels, said)
        low, high = kappa_interval(labels, said, clusters)
        return (f"| {name} | {split} ({a.n}) | {a.agreement:.3f} | {a.precision:.3f}"
                f" | {a.recall:.3f} | {a.kappa:.3f} | [{low:.2f}, {high:.2f}] |")

    for name in graders:
        for split, index in groups:
            lines.append(row(name, split, [items[i].label for i in index],
                             [verdicts[name][i] for i in index],
                             [items[i].cluster for i in index]))
    # Human agreement: the second reading scored against the first, on the items read twice.
    for split, index in groups:
        twice = [i for i in index if len(items[i].readings) >= 2]
        if twice:
            lines.append(row("second reading", split, [items[i].readings[0] for i in twice],
                             [items[i].readings[1] for i in twice],
                             [items[i].cluster for i in twice]))
    if any(len(item.readings) >= 2 for item in items):
        lines += ["", "`second reading`: the second annotator's labels against the first's "
                  "(precision and recall of the second's \"correct\"), on the items both read: "
                  "the agreement of two careful readers, the ceiling for a grader. The graders "
                  "are scored against `label`, the common reading or, where the two differ, "
                  "an adjudicator's."]
    return "\n".join(lines)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def disagreements(items: Sequence[LabelledItem], verdicts: Sequence[int], grader: str) -> str:
    """A Markdown list of the items where ``grader``'s verdict is not the label: what to read
    when revising a grader (the answer is shown as graders read it, its first sentence).

    >>> item = LabelledItem(id="a1", split="s", question="Who?", golds=["Ann"],
    ...                     answer="Bob. Ann.", label=1)
    >>> print(disagreements([item], [0], "contains"))
    contains disagrees with the labels on 1 of 1 items (1 correct failed, 0 wrong passed):
    <BLANKLINE>
    | id | split | label | contains | question | golds | answer (first sentence) |
    |---|---|---:|---:|---|---|---|
    | a1 | s | 1 | 0 | Who? | Ann | Bob. |
    """
    if len(verdicts) != len(items):
        raise ValueError(f"one verdict per item: {len(verdicts)} for {len(items)} items")
    wrong = [(item, v) for item, v in zip(items, verdicts, strict=True) if v != item.label]
    missed = sum(item.label for item, _ in wrong)
    lines = [f"{grader} disagrees with the labels on {len(wrong)} of {len(items)} items "
             f"({missed} correct failed, {len(wrong) - missed} wrong passed):", "",
             f"| id | split | label | {grader} | question | golds | answer (first sentence) |",
             "|---|---|---:|---:|---|---|---|"]
    for item, v in wrong:
        lines.append(f"| {item.id} | {item.split} | {item.label} | {v} | {_cell(item.question)}"
                     f" | {_cell('; '.join(item.golds))}"
                     f" | {_cell(grading.first_sentence(item.answer))} |")
    return "\n".join(lines)


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``graders`` to the CLI's subparsers; :func:`main` runs it."""
    parser = subparsers.add_parser(
        "graders", help="agreement, precision, recall and Cohen's kappa of every grader "
        "against hand labels",
        description="Grade every hand-labelled answer of a labels file with every cheap "
        "grader (and optionally an LLM judge), and print agreement, precision, recall and "
        "Cohen's kappa per split of the file and overall.")
    parser.add_argument("--labels", type=Path, required=True,
                        help="labels file (JSON Lines), e.g. "
                        "results/grader_validity/labels.jsonl")
    parser.add_argument("--passages", type=Path, default=None,
                        help="passages of the items (default: passages.json beside --labels)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    parser.add_argument("--judge", default=None,
                        help="also score an LLM judge: an OpenAI-compatible base URL "
                        "(http...), or a local model (a save_pretrained directory, a .gguf "
                        "file, or 'embedded')")
    parser.add_argument("--judge-model", default="gpt-4.1",
                        help="model name for an endpoint judge")
    parser.add_argument("--errors", default=None, metavar="GRADER",
                        help="also list the items where this grader (committed, contains, "
                        "..., or judge) disagrees with the labels")
    from selfedit.envs.judge import JUDGE_PROMPTS

    parser.add_argument("--judge-prompt", default="rubric", choices=sorted(JUDGE_PROMPTS),
                        help="the judge's prompt: 'rubric' (the labels' rubric in brief, the "
                        "env's default) or 'lenient' (any answer that means the gold)")
    return parser


def graders_command(labels: str | Path, passages: str | Path | None = None,
                    output: str | Path | None = None, judge: str | None = None,
                    judge_model: str = "gpt-4.1", judge_prompt: str = "rubric",
                    errors: str | None = None) -> str:
    """What ``selfedit graders`` does: the table for a labels file (also written to
    ``output``); ``judge`` (an endpoint or a local model, see
    :func:`~selfedit.envs.judge.judge_from`) adds rows for an LLM judge; ``errors`` names a
    grader whose disagreements with the labels are listed below the table.

    Raises:
        ConfigError: For ``errors`` naming no grader of the table.
    """
    items = load_labels(labels, passages)
    graders: dict[str, grading.Grader] = dict(grading.GRADERS)
    if judge:
        from selfedit.envs.judge import judge_from

        graders["judge"] = judge_from(judge, model=judge_model, prompt=judge_prompt)
    if errors is not None and errors not in graders:
        from selfedit.envs.config import ConfigError

        raise ConfigError(f"--errors {errors!r}: no such grader here; choose one of "
                          f"{sorted(graders)} (judge needs --judge)")
    verdicts = grade_items(items, graders)
    table = validity_report(items, graders, verdicts=verdicts,
                            title=f"Graders against the hand labels of {labels}\n")
    if errors is not None:
        table += "\n\n" + disagreements(items, verdicts[errors], errors)
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + "\n", encoding="utf-8")
    return table


def main(args: argparse.Namespace) -> int:
    """Run ``selfedit graders`` on parsed arguments; print the table, return an exit code."""
    print(graders_command(args.labels, args.passages, args.output, getattr(args, "judge", None),
                          getattr(args, "judge_model", "gpt-4.1"),
                          getattr(args, "judge_prompt", "rubric"), getattr(args, "errors", None)))
    return 0


if __name__ == "__main__":  # python -m selfedit.training.graders --labels FILE
    _parser = argparse.ArgumentParser(prog="selfedit")
    add_subcommand(_parser.add_subparsers(dest="command", required=True))
    raise SystemExit(main(_parser.parse_args(["graders", *sys.argv[1:]])))
