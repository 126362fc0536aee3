"""Scoring templates with the env, each evaluation once: the cache policy training shares.

An :class:`Evaluator` steps the env with one template on one passage (with
``env.completions_per_passage`` completions) and records the outcome in an
:class:`EvalCache` (``evaluations.jsonl``), keyed by everything that determines it: the env
model's fingerprint, the env settings, the template, the passage text and the reset seed. The
same key is the same deterministic env step, so a resumed run never repeats one, and every
template meets the same completion and LoRA seeds on a passage (paired comparisons).

On ``selfedit/ARC-v0`` the same holds with a recipe for the template and a task for the
passage: the env's :class:`~selfedit.training.env_kinds.EnvKind` names the item, picks it at
reset and lists the baselines; the step's info is read through the step-info contract.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.training.env_kinds import EnvKind, kind_of_env
from selfedit.training.jsonio import JsonlLog, stable_hash
from selfedit.training.policy import Sample, TemplatePolicy

__all__ = ["EvalCache", "Evaluation", "Evaluator", "baseline_eval", "heldout_eval",
           "heldout_table", "shorten"]


class EvalCache:
    """A map from an evaluation key to its record, kept in ``evaluations.jsonl``.

    Each :meth:`put` writes one complete line and fsyncs it; the file is repaired once when
    opened (:class:`~selfedit.training.jsonio.JsonlLog`). ``path=None`` keeps the records in
    memory only. ``hits`` and ``misses`` count lookups of this process.
    """

    def __init__(self, path: Path | JsonlLog | None = None) -> None:
        self._log = path if isinstance(path, JsonlLog) or path is None else JsonlLog(
            path, key="key")
        self._records: dict[str, dict[str, Any]] = {}
        if self._log is not None:
            self._records = {r["key"]: r for r in self._log if "key" in r}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        if record is None:
            self.misses += 1
        else:
            self.hits += 1
        return record

    def put(self, record: dict[str, Any]) -> None:
        """Store ``record`` (it must carry its ``key``) and write it to disk now."""
        if self._log is not None:
            record = self._log.append(record)
        self._records[record["key"]] = record

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


@dataclass
class Evaluation:
    """One template on one passage (M completions): an env step, or an invalid template.

    On ARC: one recipe on one task (``passage_index``/``passage_id`` hold the task's).
    """

    key: str
    passage_index: int
    passage_id: str
    reset_seed: int
    fingerprint: str  # the env model's weights the step ran with
    template: str  # canonical JSON, or the raw reply of an invalid one
    valid: bool
    reward: float
    accuracy: float | None = None
    base_accuracy: float | None = None
    gain: float | None = None
    error: str | None = None
    completions: list[dict[str, Any]] = field(default_factory=list)  # text, accuracy, gain
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Evaluation:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class Evaluator:
    """Steps the env with a template on one passage; every result goes through the cache.

    The key is (the env model's fingerprint, the env settings, the template, the passage's
    text, the reset seed): the same key is the same deterministic env step, so it is run
    once per run directory, killed runs included. The reset seed depends on the run seed and
    the passage only, so every template of every iteration meets the same completion and
    LoRA seeds on a passage: comparisons are paired. ``kind`` is the env's
    :class:`~selfedit.training.env_kinds.EnvKind` (default: the one of ``env``'s class).
    """

    def __init__(self, env: Any, cache: EvalCache, *, seed: int,
                 progress: bool = True, kind: EnvKind | None = None) -> None:
        self.env = env
        self.cache = cache
        self.seed = seed
        self.progress = progress
        self.kind = kind or kind_of_env(env)
        self.steps = 0  # env steps run by this process
        settings = asdict(env.config)
        for volatile in ("baseline_cache", "verify_base_every", "device"):
            settings.pop(volatile, None)
        self._settings = stable_hash(settings)

    def reset_seed(self, passage_index: int) -> int:
        return self.seed * 100_003 + passage_index

    def key(self, sample: Sample, passage_index: int) -> str:
        item = self.kind.item_fingerprint(self.env, passage_index)
        return stable_hash([self.env.backend.fingerprint, self._settings, sample.text,
                            item, self.reset_seed(passage_index)], n=24)

    def evaluate(self, sample: Sample, passage_index: int) -> Evaluation:
        return self.evaluate_many([(sample, passage_index)])[0]

    def evaluate_many(self, pairs: Sequence[tuple[Sample, int]], *,
                      batch: int = 8) -> list[Evaluation]:
        """Every (template, passage) pair, the new ones ``batch`` at a time in one batched
        pass of the env (issue 11); cached ones are read, invalid templates never run.

        A pair's outcome is the env step ``reset(seed=reset_seed(p), passage p)`` then
        ``step(template)`` would give, whatever else shares its batch.
        """
        from selfedit.training.executor import Job, step_jobs

        env, kind = self.env, self.kind
        out: list[Evaluation | None] = [None] * len(pairs)
        todo: list[tuple[int, str]] = []
        for i, (sample, p) in enumerate(pairs):
            key = self.key(sample, p)
            if sample.template is None:
                out[i] = Evaluation(key, p, kind.item_id(env, p), self.reset_seed(p),
                                    env.backend.fingerprint, sample.text, False,
                                    float(env.config.invalid_reward),
                                    error=f"the reply is not a valid "
                                    f"{kind.action_key}")
                continue
            cached = self.cache.get(key)
            if cached is not None:
                out[i] = Evaluation.from_dict(cached)
            elif all(key != k for _, k in todo):
                todo.append((i, key))
        for start in range(0, len(todo), batch):
            block = todo[start : start + batch]
            t0 = time.perf_counter()
            jobs = [Job(pairs[i][0].template, self.reset_seed(pairs[i][1]),
                        kind.reset_options((pairs[i][1],))) for i, _ in block]
            outcomes = step_jobs(env, jobs)
            seconds = (time.perf_counter() - t0) / len(block)  # amortised over the batch
            self.steps += len(block)
            for (i, key), (reward, info) in zip(block, outcomes, strict=True):
                out[i] = self._record(key, pairs[i], reward, info, seconds)
        for i, (sample, p) in enumerate(pairs):  # duplicates of a pair evaluated above
            if out[i] is None:
                out[i] = Evaluation.from_dict(self.cache.get(self.key(sample, p)) or {})
        return [ev for ev in out if ev is not None]

    def _record(self, key: str, pair: tuple[Sample, int], reward: float, info: dict[str, Any],
                seconds: float) -> Evaluation:
        sample, p = pair
        env = self.env
        item_id = self.kind.item_id(env, p)
        result = Evaluation(key, p, item_id, self.reset_seed(p), env.backend.fingerprint,
                            sample.text, True, float(reward), error=info.get("error"),
                            seconds=seconds)
        if result.error is None:
            result.accuracy = float(info["accuracy"])
            result.base_accuracy = float(info["base_accuracy"])
            result.gain = float(info["gain"])
            result.metrics = dict(info["metrics"])
            result.completions = [  # (ARC's results have no completion: a recipe is data-free)
                {"completion": r["completion"], "accuracy": r["accuracy"],
                 "base_accuracy": r["base_accuracy"], "gain": r["gain"]}
                for r in info["results"] if "completion" in r
            ]
        self.cache.put(result.to_dict())
        if self.progress:
            what = f"error: {result.error}" if result.error else (
                f"reward {result.reward:.3f}  base {result.base_accuracy:.3f}")
            print(f"  [{item_id}] {what}  ({result.seconds:.1f}s)  {shorten(sample.text)}",
                  flush=True)
        return result


def shorten(text: str, n: int = 70) -> str:
    """``text`` on one line, at most ``n`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def heldout_eval(policy: TemplatePolicy, evaluator: Evaluator, passages: list[int], *,
                 samples: int, seed: int) -> dict[str, Any]:
    """The policy's greedy template and ``samples`` sampled ones on the held-out passages.

    The sampling seed is the same after every iteration, so the held-out numbers of two
    iterations differ by the policy only. On ARC each held-out task has its own prompt: the
    policy writes a greedy and ``samples`` sampled recipes per task (one batched call each),
    every row of ``templates`` is one task's, and ``greedy`` / ``sampled_*`` average the
    tasks per sample index (``sampled_best``: the best sample index).
    """
    groups = evaluator.kind.prompt_groups(evaluator.env, passages, policy.prompt)
    prompts = [prompt for prompt, _ in groups]
    greedy = policy.sample_prompts(prompts, seed=seed, greedy=True)  # (G,)
    sampled = policy.sample_prompts([p for p in prompts for _ in range(samples)],
                                    seed=seed + 1) if samples else []  # (G * samples,)
    written = [[greedy[g], *sampled[g * samples:(g + 1) * samples]] for g in range(len(groups))]
    rows = []
    by_index: list[list[float]] = [[] for _ in range(1 + samples)]  # per sample index
    for g, (_, items) in enumerate(groups):
        for i, sample in enumerate(written[g]):
            evs = evaluator.evaluate_many([(sample, p) for p in items])
            reward = float(np.mean([e.reward for e in evs]))
            by_index[i].append(reward)
            rows.append({"kind": "greedy" if i == 0 else "sampled", "template": sample.text,
                         "valid": sample.valid, "reward": reward,
                         "per_passage": {e.passage_id: e.reward for e in evs}})
    means = [float(np.mean(r)) for r in by_index]
    sampled_means = means[1:]
    return {
        "greedy": means[0],
        "sampled_mean": float(np.mean(sampled_means)) if sampled_means else None,
        "sampled_best": float(np.max(sampled_means)) if sampled_means else None,
        "templates": rows,
    }


def baseline_eval(evaluator: Evaluator, passages: list[int], names: list[str]) -> dict[str, float]:
    """Mean reward of each baseline on the held-out passages (same seeds as the policy):
    the human templates on SQuAD, the baseline recipes on ARC (the env kind's)."""
    kind = evaluator.kind
    canonical = kind.action_format().canonical
    samples = {name: Sample(canonical(kind.baseline_action(name)), kind.baseline_action(name))
               for name in names}
    evs = evaluator.evaluate_many([(s, p) for s in samples.values() for p in passages])
    n = len(passages)
    return {name: float(np.mean([e.reward for e in evs[i * n : (i + 1) * n]]))
            for i, name in enumerate(names)}


def heldout_table(records: list[dict[str, Any]], baselines: list[str]) -> str:
    """Markdown: held-out reward of the policy per iteration, with the baselines beside it.

    Baselines measured once (with the initial model) are repeated on every row.
    """
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    head = ("| iteration | policy greedy | policy sampled (mean) | policy sampled (best) | "
            + " | ".join(baselines) + " |")
    rows = [head, "|" + "---:|" * (4 + len(baselines))]
    last_baselines: dict[str, float] = {}
    for r in records:
        last_baselines = r.get("baselines") or last_baselines
        held = r.get("heldout") or {}
        rows.append(f"| {r['iteration']} | {cell(held.get('greedy'))} | "
                    f"{cell(held.get('sampled_mean'))} | {cell(held.get('sampled_best'))} | "
                    + " | ".join(cell(last_baselines.get(b)) for b in baselines) + " |")
    return "\n".join(rows)
