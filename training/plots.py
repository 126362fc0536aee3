"""Benchmark figures as PNG files, drawn with matplotlib's Agg canvas.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas rather than through
``pyplot``: no global backend is switched and no window can open, so importing this module in
a notebook or on a headless machine changes nothing.

- :func:`plot_rewards`: best-so-far and per-iteration mean reward against env evaluations;
- :func:`plot_collapse`: exploration-collapse metrics per search iteration;
- :func:`plot_accuracy_bars`: the final table as bars with confidence-interval error bars.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AgentBar", "RewardSeries", "plot_accuracy_bars", "plot_collapse", "plot_rewards"]


@dataclass(frozen=True)
class RewardSeries:
    """One agent's steps in the order they ran: evaluations used by each step, its reward."""

    evaluations: Sequence[int]
    rewards: Sequence[float]


@dataclass(frozen=True)
class AgentBar:
    """One bar of the final table: mean accuracy, its interval and the base accuracy."""

    agent: str
    mean: float
    low: float
    high: float
    base: float


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _colors(agents: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per agent, in config order, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {agent: cmap(i % 10) for i, agent in enumerate(agents)}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_rewards(
    series: Mapping[str, RewardSeries],
    path: Path,
    *,
    iteration_size: int,
    ylabel: str = "reward",
    fixed: Collection[str] = (),
) -> Path:
    """Left: best reward so far; right: mean reward of each iteration; x: env evaluations.

    Agents named in ``fixed`` (one template throughout) are drawn dashed. The best-so-far
    curve is the maximum of noisy evaluations and so rises with the number of evaluations
    even for a template that never changes (the fixed baselines show by how much); compare
    agents on the table's paired means, not on this curve's end point.
    """
    fig, (best_ax, mean_ax) = _figure(12.0, 4.2, ncols=2)
    colors = _colors(list(series))
    for agent, s in series.items():
        if not s.rewards:
            continue
        style = {"color": colors[agent], "label": agent,
                 "linestyle": "--" if agent in fixed else "-"}
        x = np.cumsum(np.asarray(s.evaluations, dtype=float))  # (steps,) evaluations so far
        r = np.asarray(s.rewards, dtype=float)  # (steps,)
        best_ax.step(x, np.maximum.accumulate(r), where="post", linewidth=1.6, **style)
        ends = list(range(iteration_size, len(r) + 1, iteration_size))
        if not ends or ends[-1] != len(r):
            ends.append(len(r))  # a trailing partial iteration is still shown
        starts = [0, *ends[:-1]]
        means = [float(r[a:b].mean()) for a, b in zip(starts, ends, strict=True)]
        mean_ax.plot(x[np.asarray(ends) - 1], means, marker="o", linewidth=1.4, markersize=4,
                     **style)
    best_ax.set_title("best reward so far")
    mean_ax.set_title(f"mean reward per iteration ({iteration_size} steps)")
    for ax in (best_ax, mean_ax):
        ax.set_xlabel("env evaluations (passage x completion)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_integer_locator())
    handles, labels = mean_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8,
                   title="dashed: fixed" if fixed else None, title_fontsize=8)
    return _save(fig, path)


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


COLLAPSE_KEYS = (
    ("collapse/instruction_similarity", "instruction similarity"),
    ("collapse/hyperparameter_similarity", "hyperparameter similarity"),
    ("collapse/distinct_configs", "distinct hyperparameter configs"),
)


def plot_collapse(
    iterations: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    agents: Sequence[str],
    fixed: Collection[str] = (),
) -> Path:
    """One panel per collapse metric, one line per searching agent, x: search iteration.

    Similarities of 1.0 and a single distinct config mean every template of the iteration
    was the same; a searcher whose curves climb towards them is homogenising its proposals
    (arXiv 2601.14532 reports 0.93 -> 1.00). Agents named in ``fixed`` read 1.0, 1.0 and 1
    by construction and are left out, so the searchers' lines stay visible.
    """
    fig, axes = _figure(13.0, 3.8, ncols=len(COLLAPSE_KEYS))
    colors = _colors(agents)
    drawn = False
    for agent in agents:
        if agent in fixed:
            continue
        rows = [r for r in iterations if r.get("agent") == agent and COLLAPSE_KEYS[0][0] in r]
        if not rows:
            continue
        drawn = True
        x = [int(r["iteration"]) for r in rows]
        for ax, (key, _) in zip(axes, COLLAPSE_KEYS, strict=True):
            ax.plot(x, [float(r[key]) for r in rows], marker="o", color=colors[agent],
                    label=agent, linewidth=1.4, markersize=4, alpha=0.85)
    for ax, (_, title) in zip(axes, COLLAPSE_KEYS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_integer_locator())
        if not drawn:
            text = ("fixed templates only:\n1.0, 1.0 and 1 by construction" if fixed
                    else "no iteration recorded")
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].set_ylim(-0.05, 1.05)
    axes[2].yaxis.set_major_locator(_integer_locator())
    if drawn:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _save(fig, path)


def plot_accuracy_bars(
    bars: Sequence[AgentBar], path: Path, *, ylabel: str, confidence: float = 0.95
) -> Path:
    """Mean adapted accuracy per agent with its interval; a black tick marks base accuracy."""
    fig, (ax,) = _figure(max(6.0, 1.0 + 0.9 * len(bars)), 4.4)
    colors = _colors([b.agent for b in bars])
    x = np.arange(len(bars))
    means = np.array([b.mean for b in bars])
    # Error bars as distances below and above the mean; NaN (one unit) draws none.
    below = np.nan_to_num(means - np.array([b.low for b in bars]), nan=0.0)
    above = np.nan_to_num(np.array([b.high for b in bars]) - means, nan=0.0)
    ax.bar(x, means, color=[colors[b.agent] for b in bars], alpha=0.85,
           yerr=np.vstack([below, above]), capsize=4, ecolor="0.2")
    ax.scatter(x, [b.base for b in bars], marker="_", s=600, color="black", zorder=3,
               label="base accuracy (no adapter)")
    tops = np.where(np.isfinite([b.high for b in bars]), [b.high for b in bars], means)
    for xi, mean, top in zip(x, means, tops, strict=True):
        ax.annotate(f"{mean:.3f}", (xi, max(top, mean)), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(x, [b.agent for b in bars], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(f"mean adapted accuracy, {confidence:.0%} CI over (passage, seed) units")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)
