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
diagonal is the accuracy on the passage just learned). With ``sequences > 1`` further random
orders are run from the original weights, and the matrix averaged by position. The env's base
weights are restored at the end, bit-identical (checked by checksum; a mismatch raises).
Outputs: ``forgetting.json``, ``forgetting.csv`` (first sequence, passage ids as headers),
``forgetting_mean.csv`` (by position), ``forgetting.md`` and TensorBoard (heatmap, curves).
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
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

__all__ = ["ContinualConfig", "MergingUpdate", "SequenceResult", "load_continual_config",
           "run_continual"]


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequences < 1:
            raise ConfigError(f"sequences must be >= 1, got {self.sequences}")
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
        }


def _accuracy_step(env: SelfEditEnv, template: Template, passage: int,
                   seed: int) -> dict[str, Any]:
    env.reset(seed=seed, options={"passage_ids": [passage]})
    _, reward, _, _, info = env.step(template)
    return {"reward": float(reward), "error": info.get("error"),
            "metrics": dict(info.get("metrics") or {})}


def run_sequence(env: SelfEditEnv, merging: MergingUpdate, template: Template,
                 order: list[int], *, seed: int, progress: bool = True) -> SequenceResult:
    """Learn the passages of ``order`` one after another, merging each adapter; measure."""
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
    for i, p in enumerate(order):
        t0 = time.perf_counter()
        merging.armed = True
        try:
            step = _accuracy_step(env, template, p, reset_seed(p))
        finally:
            merging.armed = False
        errors.append(step["error"])
        adapted.append(None if step["error"] else step["reward"])
        changed = merging.merge(model) if step["error"] is None else 0
        fingerprints.append(env.rebase())  # a real hash: the baselines follow the weights
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
                          errors)


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
        results, restored = run_orders(env, cfg, template, passages)
        write_outputs(rundir, cfg, results, template, restored_checksum=restored)
    return rundir.path


def run_orders(env: SelfEditEnv, cfg: ContinualConfig, template: Template,
               passages: list[int]) -> tuple[list[SequenceResult], str]:
    """Every order of the config, each from the original weights, which are restored at the
    end (bit-identical, checked); return the results and the restored checksum."""
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
            print(f"sequence {s}: {', '.join(env.corpus[p].id for p in order)}", flush=True)
            results.append(run_sequence(env, merging, template, order, seed=cfg.seed,
                                        progress=cfg.progress))
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


def write_outputs(rundir: RunDir, cfg: ContinualConfig, results: list[SequenceResult],
                  template: Template, *, restored_checksum: str) -> None:
    first = results[0]
    mean = _mean_matrix(results)
    positions = [f"#{i}" for i in range(len(first.order))]
    summary = {k: float(np.mean([r.summary()[k] for r in results])) for k in first.summary()}
    rundir.write_json("forgetting.json", {
        "template": template.to_dict(),
        "reward_grader": cfg.env.reward_grader,
        "rows": "after learning passage i (in the order of the sequence)",
        "columns": "accuracy on passage j <= i, no context, adapters merged",
        "sequences": [{**asdict(r), "summary": r.summary()} for r in results],
        "mean_matrix_by_position": mean,
        "summary": summary,
        "restored_checksum": restored_checksum,
    })
    _write_csv(rundir.path / "forgetting.csv", first.matrix, first.passage_ids,
               first.passage_ids)
    _write_csv(rundir.path / "forgetting_mean.csv", mean, positions, positions)
    text = [f"Forgetting matrix ({cfg.env.reward_grader}), first sequence:\n",
            matrix_markdown(first.matrix, first.passage_ids)]
    if len(results) > 1:
        text += [f"\nMean over {len(results)} orders, by position:\n",
                 matrix_markdown(mean, positions)]
    rundir.write_text("forgetting.md", "\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nrun directory: {rundir.path}")
    w = rundir.writer()
    if w is None:
        return
    for s, r in enumerate(results):
        for i in range(len(r.order)):
            w.add_scalar(f"continual/seq{s}/just_learned", r.matrix[i][i], i)
            w.add_scalar(f"continual/seq{s}/first_passage", r.matrix[i][0], i)
            earlier = [v for v in r.matrix[i][:i] if v is not None]
            if earlier:
                w.add_scalar(f"continual/seq{s}/earlier_mean", float(np.mean(earlier)), i)
            if r.adapted[i] is not None:
                w.add_scalar(f"continual/seq{s}/self_edit_reward", r.adapted[i], i)
    w.add_text("forgetting_matrix", "\n".join(text), 0)
    w.add_figure("forgetting_matrix", _heatmap(mean, positions), 0)
    rundir.add_hparams(cfg.hparams(), {f"hparams/{k}": v for k, v in summary.items()})


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
