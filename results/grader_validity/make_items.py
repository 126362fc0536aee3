"""Draw the items of the grader-validity set (issue 12, part 3) from the committed runs.

    python results/grader_validity/make_items.py           # batch 1: items.jsonl
    python results/grader_validity/make_items.py --fresh   # batch 2: fresh.jsonl

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

Batch 1 (seed 12, 256 items) was split at random into halves ``tune`` and ``tune2`` (first
called ``heldout``; see rubric.md for why it was renamed). Batch 2 (seed 13, the held-out
set) excludes every (question, answer) of batch 1 and is all ``heldout``. Both were drawn
from the tree as committed with this file; the embedded corpus has since grown, so a rerun
draws other red-team items (and passages.json keeps the passages as they were).

Labels are added by hand afterwards (see rubric.md): labels.jsonl is the two batches with
``label`` (1 correct, 0 wrong) and ``note`` filled in; this script never writes labels. The
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
from selfedit.training.recitation import STRATEGIES

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
}


def _mentions(answer: str, golds: list[str]) -> bool:
    text = f" {normalize_answer(answer)} "
    return any(f" {g} " in text for g in map(normalize_answer, golds) if g)


def _pools() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Every distinct (question, answer) of the committed runs, by group."""
    pools: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for path in sorted(glob.glob(str(REPO / "results" / "**" / "steps.jsonl"), recursive=True)):
        rel = str(Path(path).relative_to(REPO))
        for line in open(path, encoding="utf-8"):
            record = json.loads(line)
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
    exclude = _labelled_keys() if batch == "fresh" else set()
    pools = _pools()
    rng = random.Random(spec["seed"])
    chosen: list[dict[str, Any]] = []

    def golds_of(e: dict[str, Any]) -> list[str]:
        p = corpora[e["passage_id"].split(":")[0]].by_id(e["passage_id"])
        return list(p.questions[e["qi"]].answers)

    for group, (mentioning, uniform) in spec["plan"].items():
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
        for strategy, (_, fn) in STRATEGIES.items():
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
            e["split"] = "heldout"
    rng.shuffle(chosen)
    passages_path = HERE / "passages.json"
    passages: dict[str, dict[str, Any]] = (
        json.loads(passages_path.read_text(encoding="utf-8")) if batch == "fresh"
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
    draw("fresh" if parser.parse_args().fresh else "first")
