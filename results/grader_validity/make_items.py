"""Draw the items of the grader-validity set (issue 12, part 3) from the committed runs.

    python results/grader_validity/make_items.py           # batch 1: items.jsonl
    python results/grader_validity/make_items.py --fresh   # batch 2: fresh.jsonl
    python results/grader_validity/make_items.py --third   # batch 3: third.jsonl
    python results/grader_validity/make_items.py --fourth  # batch 4: fourth.jsonl

Every item is one (question, gold answers, answer) with its passage, drawn with a fixed seed:

- natural answers of adapted models (``answers`` in results/*/steps.jsonl, agents other than
  no_training) and of the base model (``base_answers``), on the embedded corpus and on SQuAD
  dev. Half of each adapted group comes from answers that mention a gold answer somewhere
  in their text (so that there are enough correct answers to measure agreement on), half
  uniformly from all of them;
- red-team answers (selfedit.training.recitation.STRATEGIES), preferring answers whose
  first sentence holds a gold answer (the hard cases for a grader): batch 1 two per
  strategy on the embedded corpus and on SQuAD dev passages 0-99, batch 2 one per strategy
  on the embedded corpus and on SQuAD dev passages 100-199.

Batch 3 (seed 14, the second held-out set ``heldout2``) was drawn after ``committed`` was
revised a second time: adapted answers only from the runs committed that day
(results/operators_cpu__*, results/cpt_cpu__*, results/measures_cpu and the end-to-end red
team's rows, results/redteam_e2e/rows.jsonl; results/continual_gated_cpu__* keeps no
answers), red-team answers (the positional reciters included) on the embedded corpus and on
SQuAD dev passages 200-299, excluding every (question, answer) of batches 1 and 2.

Batch 4 (seed 15, the third held-out set ``heldout3``, 2026-12-02) draws from every
committed run again (other answers than batches 1-3's), and every red-team row (knowledge-
free, positional and guessers) on the embedded corpus and on SQuAD dev passages 300-399.

Batch 1 (seed 12, 256 items) was split at random into halves ``tune`` and ``tune2`` (first
called ``heldout``; see rubric.md for why it was renamed). Batch 2 (seed 13, the held-out
set) excludes every (question, answer) of batch 1 and is all ``heldout``. Both were drawn
from the tree as committed with this file; the embedded corpus has since grown, so a rerun
draws other red-team items (and passages.json keeps the passages as they were).

Labels are added by hand afterwards (see rubric.md): labels.jsonl is the four batches with
two independent readings each (``annotations``), an ``adjudication`` where they differ,
and the resulting ``label`` (1 correct, 0 wrong) and ``note``; this script never writes
labels. The
passages the items belong to go to passages.json (title, text, every question and its golds),
so the set is graded the way the env grades, with the passage's keywords.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
from pathlib import Path
from typing import Any

from selfedit.envs.corpus import Corpus, load_corpus
from selfedit.envs.grading import normalize_answer, shorten_answer
from selfedit.training.recitation import GUESSES, POSITIONAL, STRATEGIES

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SQUAD = REPO.parent / "shared" / "squad" / "squad_v1.1_dev_seal.json"

# (seed, answers per group: (mentioning a gold, uniform), red-team SQuAD passages, per
# strategy and corpus, output file, id prefix)
BATCHES: dict[str, dict[str, Any]] = {
    "first": {"seed": 12, "plan": {"embedded-adapted": (40, 35), "squad-adapted": (40, 35),
                                   "embedded-base": (0, 15), "squad-base": (10, 20)},
              "squad_red_team": "0:100", "per_strategy": 2, "out": "items.jsonl",
              "prefix": "v"},
    "fresh": {"seed": 13, "plan": {"embedded-adapted": (20, 15), "squad-adapted": (20, 15),
                                   "embedded-base": (0, 5), "squad-base": (5, 10)},
              "squad_red_team": "100:200", "per_strategy": 1, "out": "fresh.jsonl",
              "prefix": "w"},
    "third": {"seed": 14, "plan": {"embedded-adapted": (30, 20), "squad-adapted": (0, 0),
                                   "embedded-base": (0, 10), "squad-base": (0, 0)},
              "squad_red_team": "200:300", "per_strategy": 1, "out": "third.jsonl",
              "prefix": "x", "split": "heldout2", "positional": True,
              "sources": ("results/operators_cpu__*/steps.jsonl",
                          "results/cpt_cpu__*/steps.jsonl",
                          "results/measures_cpu/run/steps.jsonl",
                          "results/redteam_e2e/rows.jsonl")},
    "fourth": {"seed": 15, "plan": {"embedded-adapted": (45, 20), "squad-adapted": (30, 15),
                                    "embedded-base": (0, 5), "squad-base": (0, 10)},
               "squad_red_team": "300:400", "per_strategy": 1, "out": "fourth.jsonl",
               "prefix": "y", "split": "heldout3", "positional": True, "guesses": True},
}


def _mentions(answer: str, golds: list[str]) -> bool:
    text = f" {normalize_answer(answer)} "
    return any(f" {g} " in text for g in map(normalize_answer, golds) if g)


def _e2e_records(path: str) -> list[dict[str, Any]]:
    """The end-to-end red team's rows (results/redteam_e2e/rows.jsonl) as step records."""
    corpus = load_corpus("embedded")
    records = []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        if row.get("error"):
            continue  # nothing was trained: its answers are no_training's
        p = corpus.by_id(row["passage_id"])
        records.append({"agent": row["strategy"], "results": [{
            "passage_id": row["passage_id"], "answers": row["answers"],
            "questions": [q.question for q in p.questions],
            "golds": [list(q.answers) for q in p.questions]}]})
    return records


def _pools(sources: tuple[str, ...] = ("results/**/steps.jsonl",),
           ) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Every distinct (question, answer) of the committed runs, by group."""
    pools: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    paths = sorted({p for pattern in sources
                    for p in glob.glob(str(REPO / pattern), recursive=True)})
    for path in paths:
        rel = str(Path(path).relative_to(REPO))
        records = (_e2e_records(path) if path.endswith("rows.jsonl")
                   else map(json.loads, open(path, encoding="utf-8")))
        for record in records:
            for result in record.get("results") or []:
                corpus = "embedded" if result["passage_id"].startswith("embedded") else "squad"
                for kind in ("answers", "base_answers"):
                    if kind not in result or (kind == "answers"
                                              and record["agent"] == "no_training"):
                        continue
                    group = f"{corpus}-{'adapted' if kind == 'answers' else 'base'}"
                    for qi, answer in enumerate(result[kind]):
                        key = (result["questions"][qi], answer)
                        pools.setdefault(group, {}).setdefault(key, {
                            "source": f"{rel} agent={record['agent']} {kind}",
                            "passage_id": result["passage_id"], "qi": qi, "answer": answer,
                            # the passage's questions as the run saw them
                            "questions": result["questions"], "golds": result["golds"],
                        })
    return pools


def _labelled_keys() -> set[tuple[str, str]]:
    path = HERE / "labels.jsonl"
    if not path.is_file():
        return set()
    return {(item["question"], item["answer"])
            for item in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def draw(batch: str) -> None:
    """Draw one batch and write it (unlabelled) beside this file."""
    spec = BATCHES[batch]
    corpora: dict[str, Corpus] = {"embedded": load_corpus("embedded"),
                                  "squad_v1.1_dev_seal": load_corpus(SQUAD)}
    exclude = _labelled_keys() if batch != "first" else set()
    pools = _pools(spec.get("sources", ("results/**/steps.jsonl",)))
    rng = random.Random(spec["seed"])
    chosen: list[dict[str, Any]] = []

    def golds_of(e: dict[str, Any]) -> list[str]:
        p = corpora[e["passage_id"].split(":")[0]].by_id(e["passage_id"])
        return list(p.questions[e["qi"]].answers)

    for group, (mentioning, uniform) in spec["plan"].items():
        if not mentioning + uniform:
            continue
        entries = sorted(pools[group].values(), key=lambda e: (e["source"], e["passage_id"],
                                                                 e["qi"], e["answer"]))
        entries = [e for e in entries
                   if (golds_and_question(corpora, e)[1], e["answer"]) not in exclude]
        rng.shuffle(entries)
        picked = [e for e in entries if _mentions(e["answer"], golds_of(e))][:mentioning]
        rest = [e for e in entries if e not in picked]
        picked += rest[:uniform]
        chosen += [dict(e, group=group) for e in picked]
    red_team = (("embedded", corpora["embedded"]),
                ("squad", corpora["squad_v1.1_dev_seal"].select(spec["squad_red_team"])))
    for name, corpus in red_team:
        strategies = (dict(STRATEGIES) | (dict(POSITIONAL) if spec.get("positional") else {})
                      | (dict(GUESSES) if spec.get("guesses") else {}))
        for strategy, (_, fn) in strategies.items():
            candidates = []
            for passage in corpus:
                for qi, q in enumerate(passage.questions):
                    answer = fn(passage, qi)
                    if (q.question, answer) in exclude:
                        continue
                    hard = _mentions(shorten_answer(answer, 40), list(q.answers))
                    candidates.append((hard, passage.id, qi, answer))
            rng.shuffle(candidates)
            candidates.sort(key=lambda c: not c[0])  # hard ones first, random among them
            for _hard, pid, qi, answer in candidates[: spec["per_strategy"]]:
                chosen.append({"source": f"red team: {strategy}", "passage_id": pid, "qi": qi,
                               "answer": answer, "group": f"{name}-redteam"})
    if batch == "first":  # stratified halves: within each group, alternate after a shuffle
        by_group: dict[str, list[dict[str, Any]]] = {}
        for e in chosen:
            by_group.setdefault(e["group"], []).append(e)
        for entries in by_group.values():
            rng.shuffle(entries)
            for k, e in enumerate(entries):
                e["split"] = "tune" if k % 2 == 0 else "tune2"
    else:
        for e in chosen:
            e["split"] = spec.get("split", "heldout")
    rng.shuffle(chosen)
    passages_path = HERE / "passages.json"
    passages: dict[str, dict[str, Any]] = (
        json.loads(passages_path.read_text(encoding="utf-8")) if batch != "first"
        and passages_path.is_file() else {})
    items = []
    for n, e in enumerate(chosen, 1):
        p = corpora[e["passage_id"].split(":")[0]].by_id(e["passage_id"])
        entry = {"title": p.title, "context": p.context,
                 "questions": e.get("questions", [q.question for q in p.questions]),
                 "golds": e.get("golds", [list(q.answers) for q in p.questions])}
        # A passage that changed since an earlier batch is kept under its fingerprint, so
        # every item is graded with the passage as it was when its answer was drawn.
        key = p.id if passages.get(p.id, entry) == entry else f"{p.id}@{p.fingerprint}"
        passages.setdefault(key, entry)
        items.append({
            "id": f"{spec['prefix']}{n:03d}", "split": e["split"], "group": e["group"],
            "source": e["source"], "passage_id": p.id, "passage_key": key, "qi": e["qi"],
            "question": entry["questions"][e["qi"]],
            "golds": list(entry["golds"][e["qi"]]), "answer": e["answer"],
            "label": None, "note": "",
        })
    with open(HERE / spec["out"], "w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    def position(key: str) -> tuple[str, int, str]:
        corpus, rest = key.split(":", 1)
        return corpus, int(rest.split("@")[0]), key

    order = sorted(passages, key=position)
    passages_path.write_text(
        json.dumps({pid: passages[pid] for pid in order}, ensure_ascii=False, indent=1),
        encoding="utf-8")
    print(f"wrote {len(items)} items to {spec['out']}; passages.json holds {len(passages)} "
          "passages; label the items by hand into labels.jsonl")


def golds_and_question(corpora: dict[str, Corpus], e: dict[str, Any]) -> tuple[list[str], str]:
    """The golds and question text of a pool entry."""
    p = corpora[e["passage_id"].split(":")[0]].by_id(e["passage_id"])
    q = p.questions[e["qi"]]
    return list(q.answers), q.question


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="draw batch 2 (the held-out set)")
    parser.add_argument("--third", action="store_true",
                        help="draw batch 3 (the second held-out set, heldout2)")
    parser.add_argument("--fourth", action="store_true",
                        help="draw batch 4 (the third held-out set, heldout3, two annotators)")
    options = parser.parse_args()
    draw("fourth" if options.fourth else "third" if options.third
         else "fresh" if options.fresh else "first")
