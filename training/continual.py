"""Continual self-editing (SEAL, arXiv 2506.10943, sec. 5): adapters accumulate, forgetting shows.

``selfedit continual --config configs/continual_cpu.yaml`` lands here. For a sequence of
passages p_0, ..., p_{n-1}:

1. the model (with every earlier passage's adapter already merged) completes the template on
   p_i and a LoRA is trained on the result: one ordinary env step, whose reward is the
   accuracy on p_i with the adapter active;
2. that adapter is **merged** into the working weights instead of discarded
   (:class:`MergingUpdate` wraps the env's update operator and keeps what it trained), so the
   next self-edit is written by, and trained on top of, the updated model;
3. the accuracy on every passage seen so far, p_0 ... p_i, is measured with the merged weights
   and no context (an env step with the ``no_training`` template: the model as it now is).

Row i of the *forgetting matrix* holds those accuracies after passage i (columns j <= i; the
diagonal is the accuracy on the passage just learned).

**Gated merges** (as STABLE gates SEAL's continual self-edits; issue 17): with ``policies``
naming ``gated``, a merge is committed only if a forgetting check passes. After passage i's
adapter is trained, its weights are merged *tentatively*, the accuracy on the earlier passages
p_0 ... p_{i-1} is measured, and if their mean dropped by more than ``max_forgetting`` from
before the merge, the merge is undone (the changed modules' weights are copied back from a
saved copy: bit-identical, checked by checksum) and the adapter discarded; the model goes on
to p_{i+1} as it was. ``policies: [ungated, gated]`` runs both from the original weights on the
same orders and writes their matrices side by side. With ``sequences > 1`` further random
orders are run from the original weights, and the matrix averaged by position. The env's base
weights are restored at the end, bit-identical (checked by checksum; a mismatch raises).
Outputs: ``forgetting.json``, ``forgetting.csv`` (first sequence, passage ids as headers),
``forgetting_mean.csv`` (by position), ``forgetting.md`` and TensorBoard (heatmap, curves);
the first policy's results are the top-level ones, and with several policies
``forgetting.json["policies"]`` holds each one's, ``forgetting_policies.csv`` every cell of
every policy side by side, and ``forgetting.md`` a matrix whose cells read ``ungated / gated``.

Size (~560 lines): the continual run is one loop whose pieces share its state (the
model written in place, the gate, the forgetting matrix and its files); split, each part
would take the whole state as arguments.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from selfedit.agents.fixed import HUMAN_BASELINES
from selfedit.envs.backend import check_model_source, refuse_weight_updates
from selfedit.envs.config import ConfigError
from selfedit.envs.selfedit_env import SelfEditEnv, load_env_corpus
from selfedit.envs.templates import Hyperparameters, Template, TemplateError
from selfedit.training.checkpoint import lora_merged_weights
from selfedit.training.experiment import ExperimentConfig, load_experiment, param
from selfedit.training.policy_config import resolve_passages
from selfedit.training.rundir import RunDir

__all__ = ["POLICIES", "ContinualConfig", "MergingUpdate", "SequenceResult",
           "load_continual_config", "run_continual"]

POLICIES = ("ungated", "gated")


@dataclass
class ContinualConfig(ExperimentConfig):
    """A continual self-editing run: one template, a sequence of passages, adapters merged."""

    where: ClassVar[str] = "continual"

    name: str = param("continual")
    passages: str | list[int] = param("0:4", "the sequence: a slice like '0:8' or indices "
                                      "into the env's corpus selection, in the order learned")
    sequences: int = param(1, "orders to run: the first as given, the others shuffled; each "
                           "starts from the original weights")
    template: str | dict[str, Any] = param("implications", "the self-edit template: a human "
                                           "baseline name or a template mapping")
    policies: list[str] = param(
        factory=lambda: ["ungated"], help="merge policies, each run from the original weights on "
        "the same orders and written side by side: 'ungated' (every merge is kept) and "
        "'gated' (a merge is kept only if the mean accuracy on earlier passages drops by at "
        "most max_forgetting; otherwise it is undone, bit-identically)")
    max_forgetting: float = param(
        0.05, "gated policy: the largest drop in mean accuracy (reward grader) on the earlier "
        "passages that a merge may cause, measured with the merge applied before committing it")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequences < 1:
            raise ConfigError(f"sequences must be >= 1, got {self.sequences}")
        unknown = [p for p in self.policies if p not in POLICIES]
        if not self.policies or unknown or len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"policies must be a non-empty list of distinct names from "
                              f"{list(POLICIES)}, got {self.policies}")
        if not 0.0 <= self.max_forgetting <= 1.0:
            raise ConfigError(f"max_forgetting is an accuracy drop between 0 and 1, got "
                              f"{self.max_forgetting}")
        if self.env.passages_per_step != 1 or self.env.completions_per_passage != 1:
            raise ConfigError("continual mode merges one adapter per passage: leave "
                              "env.passages_per_step and env.completions_per_passage at 1")
        if self.env.action_mode != "template":
            raise ConfigError("continual mode applies a template: env.action_mode must be "
                              "'template'")
        refuse_weight_updates(self.env.engine, run="continual mode (it merges each adapter)",
                              fix="set env.engine: hf")
        self.build_template()  # fail now, not after the model loaded

    def build_template(self) -> Template:
        if isinstance(self.template, str):
            if self.template not in HUMAN_BASELINES:
                raise ConfigError(f"template {self.template!r} is not a baseline name "
                                  f"({', '.join(HUMAN_BASELINES)}); or give a mapping")
            template = HUMAN_BASELINES[self.template]
        else:
            try:
                template, _ = Template.from_dict(self.template)
            except TemplateError as err:
                raise ConfigError(f"template: {err}") from None
        if not template.trains:
            raise ConfigError("the continual template must train (num_epochs >= 1)")
        return template


def load_continual_config(path: str | Path | None,
                          overrides: list[str] | None = None) -> ContinualConfig:
    """Read a continual config (YAML + ``key=value`` overrides) and validate it."""
    return load_experiment(ContinualConfig, path, overrides)


class MergingUpdate:
    """Wraps an update operator so that, when armed, the adapter it trains is kept.

    While the inner operator's adapter is active (inside its ``with`` block, after the env
    answered), the effective weights of the LoRA-wrapped modules are captured; the inner
    operator then restores the base as usual, and :meth:`merge` writes the captured weights
    into the model. Works with operators that export their adapter (``merged_weights()``,
    :class:`~selfedit.envs.update.LoRAUpdate`) or put peft LoRA layers into
    ``backend.model`` (:class:`~selfedit.envs.update.PeftLoRAUpdate`).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"{getattr(inner, 'name', 'update')}+merge"
        self.armed = False
        self.pending: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def adapted(self, backend: Any, sequences: Sequence[str], hyperparameters: Hyperparameters,
                *, seed: int, max_seconds: float | None = None) -> Iterator[Any]:
        with self.inner.adapted(backend, sequences, hyperparameters, seed=seed,
                                max_seconds=max_seconds) as stats:
            yield stats
            if self.armed and stats.error is None:
                # LoRAUpdate's adapters live in hooks, not in the model: it exports them.
                merged = getattr(self.inner, "merged_weights", None)
                self.pending = merged() if merged else lora_merged_weights(backend.model)

    @torch.no_grad()
    def merge(self, model: torch.nn.Module) -> int:
        """Write the captured weights into ``model``; return how many modules changed."""
        pending, self.pending = self.pending or {}, None
        for name, weight in pending.items():
            model.get_submodule(name).weight.copy_(weight)
        return len(pending)

    @torch.no_grad()
    def merge_tentatively(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """:meth:`merge`, returning an exact copy of every weight it overwrote, so that
        :meth:`undo` can put the model back bit for bit (the gated policy)."""
        saved = {name: model.get_submodule(name).weight.detach().clone()
                 for name in (self.pending or {})}
        self.merge(model)
        return saved

    @staticmethod
    @torch.no_grad()
    def undo(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
        """Copy the weights saved by :meth:`merge_tentatively` back into ``model``."""
        for name, weight in saved.items():
            model.get_submodule(name).weight.copy_(weight)


@dataclass
class SequenceResult:
    """One order of passages: the forgetting matrix and what led to it."""

    order: list[int]  # corpus indices, in the order learned
    passage_ids: list[str]
    base: list[float]  # accuracy of each passage before any update (order as ``order``)
    adapted: list[float | None]  # env reward of each self-edit step (adapter active)
    matrix: list[list[float | None]]  # [i][j]: after passage i, on passage j (None if j > i)
    metrics: dict[str, list[list[float | None]]]  # the same per grader
    fingerprints: list[str]  # weights after each merge
    errors: list[str | None]
    policy: str = "ungated"
    # Gated policy: per passage, whether its merge was kept and what the check measured.
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        m = np.array([[np.nan if v is None else v for v in row] for row in self.matrix])
        n = len(m)
        diag = np.diag(m)
        final = m[-1]
        return {
            "diagonal_mean": float(np.nanmean(diag)),
            "final_mean": float(np.nanmean(final)),
            "base_mean": float(np.mean(self.base)),
            "forgetting_mean": float(np.nanmean(diag[: n - 1] - final[: n - 1]))
            if n > 1 else 0.0,
            "merges_kept": float(sum(d["kept"] for d in self.decisions) if self.decisions
                                 else sum(e is None for e in self.errors)),
        }


def _accuracy_step(env: SelfEditEnv, template: Template, passage: int,
                   seed: int) -> dict[str, Any]:
    env.reset(seed=seed, options={"passage_ids": [passage]})
    _, reward, _, _, info = env.step(template)
    return {"reward": float(reward), "error": info.get("error"),
            "metrics": dict(info.get("metrics") or {})}


def run_sequence(env: SelfEditEnv, merging: MergingUpdate, template: Template,
                 order: list[int], *, seed: int, progress: bool = True,
                 max_forgetting: float | None = None) -> SequenceResult:
    """Learn the passages of ``order`` one after another, merging each adapter; measure.

    ``max_forgetting`` set: the gated policy (module docstring); None: every merge is kept.
    """
    measure = HUMAN_BASELINES["no_training"]  # the model as it now is, no adapter
    model = env.backend.model
    ids = [env.corpus[p].id for p in order]
    n = len(order)

    def reset_seed(p: int) -> int:
        return seed * 100_003 + p

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    base = [_accuracy_step(env, measure, p, reset_seed(p))["reward"] for p in order]
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    metrics: dict[str, list[list[float | None]]] = {}
    adapted: list[float | None] = []
    errors: list[str | None] = []
    fingerprints: list[str] = []
    decisions: list[dict[str, Any]] = []
    for i, p in enumerate(order):
        t0 = time.perf_counter()
        merging.armed = True
        try:
            step = _accuracy_step(env, template, p, reset_seed(p))
        finally:
            merging.armed = False
        errors.append(step["error"])
        adapted.append(None if step["error"] else step["reward"])
        if max_forgetting is None:
            changed = merging.merge(model) if step["error"] is None else 0
            fingerprints.append(env.rebase())  # a real hash: the baselines follow the weights
        else:
            decision = _gated_merge(env, merging, measure, order[:i], reset_seed,
                                    max_forgetting, failed=step["error"] is not None)
            decisions.append(decision)
            changed = decision["modules"] if decision["kept"] else 0
            fingerprints.append(decision["fingerprint"])
            shown = [("—" if v is None else f"{v:.3f}")
                     for v in (decision["before"], decision["after"])]
            say(f"  gate: earlier mean {shown[0]} -> {shown[1]}, drop {decision['drop']:+.3f}"
                f" (bound {max_forgetting:g}): " + ("kept" if decision["kept"] else "undone"))
        say(f"after {ids[i]}: self-edit reward {step['reward']:.3f}, merged {changed} modules"
            + (f" (error: {step['error']})" if step["error"] else ""))
        for j in range(i + 1):
            result = _accuracy_step(env, measure, order[j], reset_seed(order[j]))
            matrix[i][j] = result["reward"]
            for grader, value in result["metrics"].items():
                metrics.setdefault(grader, [[None] * n for _ in range(n)])[i][j] = value
        say("  accuracy on " + ", ".join(f"{ids[j]} {matrix[i][j]:.3f}" for j in range(i + 1))
            + f"  ({time.perf_counter() - t0:.1f}s)")
    return SequenceResult(list(order), ids, base, adapted, matrix, metrics, fingerprints,
                          errors, policy="ungated" if max_forgetting is None else "gated",
                          decisions=decisions)


def _gated_merge(env: SelfEditEnv, merging: MergingUpdate, measure: Template,
                 earlier: list[int], reset_seed: Any, max_forgetting: float, *,
                 failed: bool) -> dict[str, Any]:
    """Merge tentatively, measure the earlier passages, keep the merge or undo it exactly.

    The check compares the mean accuracy on the earlier passages with the model before the
    merge (cached by fingerprint: measured when the previous row was) and after it. With no
    earlier passage there is nothing to forget and the merge is kept.
    """
    model = env.backend.model

    def earlier_mean() -> float | None:
        if not earlier:
            return None
        return float(np.mean([_accuracy_step(env, measure, q, reset_seed(q))["reward"]
                              for q in earlier]))

    checksum_before = env.base_checksum()
    before = earlier_mean()
    if failed:  # the update failed: nothing to merge, the model stays as it is
        merging.pending = None
        return {"kept": False, "modules": 0, "before": before, "after": before, "drop": 0.0,
                "reason": "the self-edit failed", "fingerprint": env.backend.fingerprint,
                "checksum_before": checksum_before, "checksum_after": checksum_before}
    saved = merging.merge_tentatively(model)
    env.rebase()
    after = earlier_mean()
    drop = 0.0 if before is None or after is None else round(before - after, 10)
    kept = drop <= max_forgetting
    if not kept:
        merging.undo(model, saved)
        fingerprint = env.rebase()
    else:
        fingerprint = env.backend.fingerprint
    return {"kept": kept, "modules": len(saved), "before": before, "after": after,
            "drop": drop, "reason": None if kept else f"drop {drop:.3f} > {max_forgetting:g}",
            "fingerprint": fingerprint, "checksum_before": checksum_before,
            "checksum_after": env.base_checksum()}


def run_continual(cfg: ContinualConfig, *, env: SelfEditEnv | None = None,
                  command: str | None = None) -> Path:
    """Run every order of the config; write the forgetting matrices; restore the weights."""
    # 1. Config, passages, files; then the run directory, the env, the orders, the outputs.
    template = cfg.build_template()
    if env is None:
        check_model_source(cfg.env.model)
        corpus = load_env_corpus(cfg.env.corpus).select(cfg.env.passages)
    else:
        corpus = env.corpus
    passages = resolve_passages(corpus, cfg.passages, key="passages")
    rundir = RunDir.create(cfg, command=command)
    with rundir:
        env = env or SelfEditEnv(cfg.env, corpus=corpus)
        by_policy: dict[str, list[SequenceResult]] = {}
        for policy in cfg.policies:
            by_policy[policy], restored = run_orders(env, cfg, template, passages,
                                                     policy=policy)
        write_outputs(rundir, cfg, by_policy, template, restored_checksum=restored)
    return rundir.path


def run_orders(env: SelfEditEnv, cfg: ContinualConfig, template: Template,
               passages: list[int], *, policy: str = "ungated"
               ) -> tuple[list[SequenceResult], str]:
    """Every order of the config under one merge ``policy``, each from the original weights,
    which are restored at the end (bit-identical, checked); return the results and the
    restored checksum. The orders depend on ``cfg.seed`` only: every policy gets the same."""
    model = env.backend.model
    initial = env.base_checksum()
    # The original weights, to start each order from them and to restore them at the end.
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    merging = MergingUpdate(env.update)
    rng = np.random.default_rng(cfg.seed)
    results: list[SequenceResult] = []
    env.update = merging
    try:
        for s in range(cfg.sequences):
            order = list(passages) if s == 0 else [int(x) for x in rng.permutation(passages)]
            print(f"{policy} sequence {s}: {', '.join(env.corpus[p].id for p in order)}",
                  flush=True)
            results.append(run_sequence(
                env, merging, template, order, seed=cfg.seed, progress=cfg.progress,
                max_forgetting=cfg.max_forgetting if policy == "gated" else None))
            model.load_state_dict(snapshot)
            env.rebase()
    finally:
        env.update = merging.inner
        model.load_state_dict(snapshot)
        env.rebase()
    restored = env.base_checksum()
    if restored != initial:
        raise RuntimeError("continual mode could not restore the base weights bit-identically")
    return results, restored


def _mean_matrix(results: list[SequenceResult]) -> list[list[float | None]]:
    n = len(results[0].order)
    out: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            out[i][j] = float(np.mean([r.matrix[i][j] for r in results]))
    return out


def _write_csv(path: Path, matrix: list[list[float | None]], rows: list[str],
               cols: list[str]) -> None:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["after \\ on", *cols])
        for label, row in zip(rows, matrix, strict=True):
            out.writerow([label, *("" if v is None else f"{v:.4f}" for v in row)])


def matrix_markdown(matrix: list[list[float | None]], labels: list[str]) -> str:
    """The matrix as a Markdown table (rows: after passage i; columns: accuracy on j)."""
    head = "| after \\ on | " + " | ".join(labels) + " |"
    rows = [head, "|---|" + "---:|" * len(labels)]
    for label, row in zip(labels, matrix, strict=True):
        rows.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row)
                    + " |")
    return "\n".join(rows)


def _policy_record(results: list[SequenceResult]) -> dict[str, Any]:
    first = results[0]
    return {
        "sequences": [{**asdict(r), "summary": r.summary()} for r in results],
        "mean_matrix_by_position": _mean_matrix(results),
        "summary": {k: float(np.mean([r.summary()[k] for r in results]))
                    for k in first.summary()},
    }


def side_by_side_markdown(matrices: dict[str, list[list[float | None]]],
                          labels: list[str]) -> str:
    """Several policies' matrices in one table, each cell ``a / b`` in the policies' order.

    >>> print(side_by_side_markdown({"ungated": [[0.5]], "gated": [[0.25]]}, ["p"]))
    | after \\ on (ungated / gated) | p |
    |---|---:|
    | p | 0.500 / 0.250 |
    """
    names = list(matrices)
    rows = [f"| after \\ on ({' / '.join(names)}) | " + " | ".join(labels) + " |",
            "|---|" + "---:|" * len(labels)]
    for i, label in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            values = [matrices[n][i][j] for n in names]
            cells.append("" if all(v is None for v in values) else
                         " / ".join("-" if v is None else f"{v:.3f}" for v in values))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _decision_lines(results: list[SequenceResult], max_forgetting: float) -> list[str]:
    """The gated policy's decisions, one row per passage of the first order."""
    first = results[0]
    if not first.decisions:
        return []

    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    lines = [f"\nGated merges (first sequence; a merge is undone when the mean accuracy on the "
             f"earlier passages drops by more than {max_forgetting:g}):\n",
             "| passage | self-edit reward | earlier mean before | after merge | drop | merge |",
             "|---|---:|---:|---:|---:|---|"]
    for pid, reward, d in zip(first.passage_ids, first.adapted, first.decisions, strict=True):
        lines.append(f"| {pid} | {num(reward)} | {num(d['before'])} | {num(d['after'])} | "
                     f"{d['drop']:+.3f} | {'kept' if d['kept'] else 'undone'} |")
    return lines


def write_outputs(rundir: RunDir, cfg: ContinualConfig,
                  by_policy: dict[str, list[SequenceResult]] | list[SequenceResult],
                  template: Template, *, restored_checksum: str) -> None:
    """Write the forgetting matrices: the first policy's as the top-level results (the
    layout of a single-policy run), every policy's under ``policies`` and side by side."""
    if not isinstance(by_policy, dict):
        by_policy = {"ungated": by_policy}
    names = list(by_policy)
    results = by_policy[names[0]]
    first = results[0]
    record = _policy_record(results)
    mean, summary = record["mean_matrix_by_position"], record["summary"]
    positions = [f"#{i}" for i in range(len(first.order))]
    policies = {name: _policy_record(rs) for name, rs in by_policy.items()}
    rundir.write_json("forgetting.json", {
        "template": template.to_dict(),
        "reward_grader": cfg.env.reward_grader,
        "rows": "after learning passage i (in the order of the sequence)",
        "columns": "accuracy on passage j <= i, no context, adapters merged",
        "policy": names[0],
        **record,
        "policies": policies,
        "max_forgetting": cfg.max_forgetting,
        "restored_checksum": restored_checksum,
    })
    _write_csv(rundir.path / "forgetting.csv", first.matrix, first.passage_ids,
               first.passage_ids)
    _write_csv(rundir.path / "forgetting_mean.csv", mean, positions, positions)
    text: list[str] = []
    for name, rs in by_policy.items():
        label = f" — {name}" + (f" (max_forgetting {cfg.max_forgetting:g})"
                                if name == "gated" else "")
        text += [f"Forgetting matrix ({cfg.env.reward_grader}){label}, first sequence:\n",
                 matrix_markdown(rs[0].matrix, rs[0].passage_ids)]
        if len(rs) > 1:
            text += [f"\nMean over {len(rs)} orders, by position:\n",
                     matrix_markdown(policies[name]["mean_matrix_by_position"], positions)]
        text += _decision_lines(rs, cfg.max_forgetting) + [""]
    if len(names) > 1:
        _write_policies_csv(rundir.path / "forgetting_policies.csv", by_policy)
        text += [f"Side by side ({' / '.join(names)}), first sequence:\n",
                 side_by_side_markdown({n: by_policy[n][0].matrix for n in names},
                                       first.passage_ids),
                 "", "| policy | diagonal mean | final-row mean | forgetting mean | merges kept |",
                 "|---|---:|---:|---:|---:|"]
        for name in names:
            sm = policies[name]["summary"]
            text.append(f"| {name} | {sm['diagonal_mean']:.3f} | {sm['final_mean']:.3f} | "
                        f"{sm['forgetting_mean']:+.3f} | {sm['merges_kept']:g} |")
    rundir.write_text("forgetting.md", "\n".join(text).rstrip() + "\n")
    print("\n".join(text))
    print(f"\nrun directory: {rundir.path}")
    w = rundir.writer()
    if w is None:
        return
    for name, rs in by_policy.items():
        prefix = "continual" if name == names[0] else f"continual/{name}"
        for s, r in enumerate(rs):
            for i in range(len(r.order)):
                w.add_scalar(f"{prefix}/seq{s}/just_learned", r.matrix[i][i], i)
                w.add_scalar(f"{prefix}/seq{s}/first_passage", r.matrix[i][0], i)
                earlier = [v for v in r.matrix[i][:i] if v is not None]
                if earlier:
                    w.add_scalar(f"{prefix}/seq{s}/earlier_mean", float(np.mean(earlier)), i)
                if r.adapted[i] is not None:
                    w.add_scalar(f"{prefix}/seq{s}/self_edit_reward", r.adapted[i], i)
    w.add_text("forgetting_matrix", "\n".join(text), 0)
    w.add_figure("forgetting_matrix", _heatmap(mean, positions), 0)
    metrics = {f"hparams/{k}": v for k, v in summary.items()}
    for name in names[1:]:
        metrics.update({f"hparams/{name}/{k}": v
                        for k, v in policies[name]["summary"].items()})
    rundir.add_hparams(cfg.hparams(), metrics)


def _write_policies_csv(path: Path, by_policy: dict[str, list[SequenceResult]]) -> None:
    """Every cell of every policy's first sequence: after, on, then one column per policy."""
    names = list(by_policy)
    first = by_policy[names[0]][0]
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["after", "on", *names])
        for i, after in enumerate(first.passage_ids):
            for j in range(i + 1):
                values = [by_policy[n][0].matrix[i][j] for n in names]
                out.writerow([after, first.passage_ids[j],
                              *("" if v is None else f"{v:.4f}" for v in values)])


def _heatmap(matrix: list[list[float | None]], labels: list[str]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix])
    fig = Figure(figsize=(1 + 0.6 * len(labels), 1 + 0.5 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("accuracy on passage")
    ax.set_ylabel("after learning passage")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
