"""The benchmark's configuration: every run key plus its own, in one flat YAML file.

:class:`BenchmarkConfig` extends :class:`~selfedit.training.config.RunConfig` (agents, seeds,
episodes, env, ...) with the keys of the report: the tuning passages (checked disjoint from
the report passages, ``env.passages``), the evaluation-noise repeats and the statistics'
settings. Results go to ``<output_dir>/<name>/``, a path without a time stamp, so a committed
report keeps its path when it is regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from selfedit.agents.registry import check_agent_spec
from selfedit.envs.config import ConfigError
from selfedit.envs.corpus import Corpus
from selfedit.training.config import RunConfig
from selfedit.training.experiment import load_experiment, param

__all__ = ["BenchmarkConfig", "BenchmarkExists", "load_benchmark_config", "passage_split"]


class BenchmarkExists(ConfigError):
    """The benchmark directory already holds results; ``--resume`` or ``--force`` says which
    of the two the user wants."""


@dataclass
class BenchmarkConfig(RunConfig):
    """A benchmark: every run key (agents, seeds, episodes, env, ...) plus the keys below.

    In YAML all keys sit at the top level (``noise_repeats: 4`` beside ``agents:``), and
    ``key=value`` overrides reach both kinds. Results go to ``<output_dir>/<name>/``.
    """

    where: ClassVar[str] = "benchmark"

    tuning_passages: str | list[int] | None = param(
        None, "passages of env.corpus used while developing agents and templates (stated in "
        "the report; must not overlap env.passages, which are the report passages)")
    noise_repeats: int = param(3, "evaluate noise_template this many times with other seeds "
                               "on the report passages, to show evaluation noise (0 = skip)")
    noise_template: str | dict[str, Any] = param(
        "passage", "template of the noise section: a baseline name or a fixed-agent mapping "
        "({type: fixed, template: {...}})")
    resamples: int = param(10_000, "paired-bootstrap resamples per comparison")
    bootstrap_seed: int = param(0, "seed of the paired bootstrap")
    confidence: float = param(0.95, "coverage of every interval in the report")
    paper_anchors: bool = param(True, "add the papers' figures, quoted and marked as not "
                                "measured")
    power: float = param(0.8, "power of the detectable-difference analysis (the chance a "
                         "true difference of that size is found by a paired test at the "
                         "report's confidence)")
    measure_reference: str | None = param(
        "passage", "agent whose units the template-search measures' win rate is taken "
        "against (arXiv 2601.14532 section of the report); null or an agent not in the "
        "benchmark = that win rate is not reported")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise_repeats < 0:
            raise ConfigError(f"noise_repeats must be >= 0, got {self.noise_repeats}")
        if self.resamples < 1:
            raise ConfigError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.5 <= self.power < 1.0:
            raise ConfigError(f"power must be between 0.5 and 1 (e.g. 0.8), got {self.power}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        spec = self.noise_template
        if isinstance(spec, dict) and spec.get("type", "fixed") != "fixed":
            raise ConfigError("noise_template must be a fixed template (a baseline name or "
                              f"{{type: fixed, ...}}), got type {spec.get('type')!r}")
        check_agent_spec(spec, key="noise_template")
        if self.noise_repeats:
            self.noise_run_config()  # its names must be valid too, before anything runs

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def run(self) -> RunConfig:
        """The run keys alone: what the runner takes for ``<dir>/run/``."""
        return RunConfig(**{f.name: getattr(self, f.name) for f in fields(RunConfig)})

    def noise_run_config(self) -> RunConfig:
        """The noise runs: the noise template alone, ``noise_repeats`` seeds, every report
        passage in each. Seed indices continue after the main run's (base seed shifted by
        1000 per main seed), so no noise evaluation repeats one of the table's."""
        spec = self.noise_template
        label = spec if isinstance(spec, str) else spec.get("name", "template")
        agent = {"type": "fixed", "name": f"noise-{label}"}
        agent.update({"baseline": spec} if isinstance(spec, str) else
                     {k: v for k, v in spec.items() if k not in ("type", "name")})
        raw = self.run.to_dict()
        raw.update(name=f"{self.name}-noise", agents=[agent], seeds=self.noise_repeats,
                   seed=self.seed + 1000 * self.seeds, episodes=None)
        return RunConfig.from_dict(raw)


def load_benchmark_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> BenchmarkConfig:
    """Read a benchmark YAML file (flat keys), apply ``key=value`` overrides, validate."""
    return load_experiment(BenchmarkConfig, path, overrides)


# --- passages: tuning and report sets are disjoint ---------------------------------------
def passage_split(cfg: BenchmarkConfig, corpus: Corpus | None = None) -> dict[str, list[str]]:
    """Ids of the report passages (``env.passages``) and the tuning passages; raise if they
    overlap. Loads the corpus (unless given), not the model."""
    from selfedit.envs.selfedit_env import load_env_corpus

    corpus = corpus if corpus is not None else load_env_corpus(cfg.env.corpus)
    try:
        report = [p.id for p in corpus.select(cfg.env.passages)]
        tuning = ([] if cfg.tuning_passages is None else
                  [p.id for p in corpus.select(cfg.tuning_passages)])
    except (IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"passage selection: {err}") from None
    overlap = sorted(set(report) & set(tuning), key=report.index)
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise ConfigError(
            f"tuning_passages ({cfg.tuning_passages}) and env.passages ({cfg.env.passages})"
            f" share {len(overlap)} passage(s): {shown}. Report only on passages never used in"
            " tuning: pick disjoint selections"
        )
    return {"report": report, "tuning": tuning}
