"""The agent <-> env loop: config, env, agents, loop, save — top to bottom.

``selfedit run --config configs/baselines_cpu.yaml`` lands here. Every (agent, seed,
episode) is one env step with a stable key; a run directory records each finished step in
``steps.jsonl`` the moment it ends, and ``--resume`` skips the keys already there.

The env is the one ``env_id`` names (SQuAD passages or ARC tasks); where the two differ the
loop asks the config's :class:`~selfedit.training.env_kinds.EnvKind` (how many items a sweep
covers, the reset options that pick one, which record field holds the action, which metrics
the table shows), and it reads every step's info through the step-info contract described
there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.agents.base import Agent
from selfedit.agents.registry import check_agents, make_agent
from selfedit.training.config import RunConfig, load_config
from selfedit.training.env_kinds import EnvKind, collapse_embedder
from selfedit.training.executor import (
    Executor,
    Job,
    StepOutcome,
    check_executor,
    make_executor,
)
from selfedit.training.jsonio import bound_record, write_json_atomic
from selfedit.training.provenance import machine_description
from selfedit.training.rundir import RunDir
from selfedit.training.runlog import log_iteration

__all__ = ["AgentSummary", "Episode", "iteration_record", "missing_iterations", "plan_batches",
           "plan_episodes", "run", "summarize", "summary_table"]


@dataclass(frozen=True)
class Episode:
    """One planned env step: which agent, seed, reset seed and items (passages, tasks)."""

    agent: str
    seed_index: int
    episode: int
    reset_seed: int
    items: tuple[int, ...] | None  # indices into the env's selection; None: drawn at reset

    @property
    def key(self) -> str:
        return f"{self.agent}|s{self.seed_index}|e{self.episode}"


def plan_episodes(cfg: RunConfig, agent_names: list[str], corpus_size: int) -> list[Episode]:
    """Every agent gets the same items and reset seeds: comparisons are paired.

    ``corpus_size``: the items of the env's selection (passages; ARC tasks). With
    ``episodes`` unset, each seed sweeps them once in groups of the kind's items per step
    (``env.passages_per_step``; one ARC task); otherwise the env draws ``episodes`` groups
    from its reset seed.
    """
    k = cfg.env_kind.items_per_step(cfg.env)
    plan = []
    for agent in agent_names:
        for s in range(cfg.seeds):
            if cfg.episodes is None:
                groups: list[tuple[int, ...] | None] = [
                    tuple(range(i, min(i + k, corpus_size)))
                    for i in range(0, corpus_size - k + 1, k)
                ]
            else:
                groups = [None] * cfg.episodes
            for e, group in enumerate(groups):
                reset_seed = cfg.seed + 1000 * s + e
                plan.append(Episode(agent, s, e, reset_seed, group))
    return plan


def plan_batches(plan: list[Episode], done: set[str], size: int) -> list[list[Episode]]:
    """The steps not yet done, in plan order, in blocks of one agent's ``size`` consecutive
    planned steps (``executor.batch``): the steps an agent proposes before observing any.

    Blocks are cut by position in the agent's plan, not in what is left to do, so a resumed
    run keeps the blocks of the run it continues (a block cut short by a kill finishes as
    a smaller one).

    >>> plan = [Episode(a, 0, e, e, None) for a in ("x", "y") for e in range(3)]
    >>> [[ep.key for ep in b] for b in plan_batches(plan, {"x|s0|e0"}, 2)]
    [['x|s0|e1'], ['x|s0|e2'], ['y|s0|e0', 'y|s0|e1'], ['y|s0|e2']]
    """
    position: dict[str, int] = {}
    blocks: list[tuple[tuple[str, int], list[Episode]]] = []
    for ep in plan:
        slot = position.get(ep.agent, 0)
        position[ep.agent] = slot + 1
        if ep.key in done:
            continue
        block = (ep.agent, slot // size)
        if blocks and blocks[-1][0] == block:
            blocks[-1][1].append(ep)
        else:
            blocks.append((block, [ep]))
    return [episodes for _, episodes in blocks]


def propose(agent: Agent, env: Any, block: list[Episode], kind: EnvKind
            ) -> tuple[list[Any], float]:
    """The agent's actions for a block of its steps, and its own seconds per step.

    The env is reset to each step's seed and items for its observation; every step of a
    block sees the same archive, the one before the block.
    """
    shown = [env.reset(**_job(ep, kind).reset_kwargs()) for ep in block]
    start = time.perf_counter()
    if len(block) == 1:
        actions = [agent.act(*shown[0])]
    else:
        actions = list(agent.act_batch([obs for obs, _ in shown], [info for _, info in shown]))
    if len(actions) != len(block):
        raise RuntimeError(f"agent {agent.name!r} gave {len(actions)} actions for "
                           f"{len(block)} observations")
    return actions, (time.perf_counter() - start) / len(block)


@contextlib.contextmanager
def _executor(cfg: RunConfig, given: Executor | None) -> Iterator[Executor]:
    """The executor given (left open: its owner closes it), or one built and closed here."""
    if given is not None:
        yield given
        return
    executor = make_executor(cfg.executor, cfg.env)
    try:
        yield executor
    finally:
        executor.close()


def _job(ep: Episode, kind: EnvKind, action: Any = None) -> Job:
    return Job(action, ep.reset_seed, kind.reset_options(ep.items))


def _record(ep: Episode, reward: float, info: dict[str, Any], keep_text: bool,
            kind: EnvKind) -> dict[str, Any]:
    record = {
        "key": ep.key,
        "agent": ep.agent,
        "seed_index": ep.seed_index,
        "episode": ep.episode,
        "reset_seed": ep.reset_seed,
        "reward": reward,
        **{k: v for k, v in info.items() if k != "results"},
    }
    record["results"] = info.get("results", [])
    return record if keep_text else kind.drop_text(record)


def _step_line(record: dict[str, Any], metric: tuple[str, str] = ("f1", "f1")) -> str:
    """One line per step; ``metric`` (metrics key, label): the env's extra number."""
    head = f"[{record['agent']}] s{record['seed_index']} e{record['episode']}"
    ids = ",".join(record["passage_ids"])
    if record.get("error"):
        return f"{head} {ids}: reward {record['reward']:+.3f}  error: {record['error']}"
    key, label = metric
    return (
        f"{head} {ids}: reward {record['reward']:.3f}  base {record['base_accuracy']:.3f}"
        f"  gain {record['gain']:+.3f}  {label} {record['metrics'][key]:.3f}"
        f"  ({record['timings']['step_s']:.1f}s)"
    )


def run(
    cfg: RunConfig,
    *,
    resume: Path | None = None,
    env: Any = None,
    executor: Executor | None = None,
    command: str | None = None,
    at: Path | None = None,
) -> Path:
    """Run every agent of the config through the env; return the run directory.

    ``resume`` continues that run directory (``cfg`` is then its own config); ``at`` runs in
    a fixed directory, made if it is new and continued otherwise (the benchmark's ``run/``);
    ``env`` replaces the env built from ``cfg.env`` (an env of ``cfg.env_id``; Ray workers
    still build theirs from ``cfg.env``); ``executor`` replaces the one built from
    ``cfg.executor`` and is left open.
    """
    from tqdm.auto import tqdm

    # 1. Agent entries first: a bad one fails before the model loads.
    names = check_agents(cfg.agents)
    if executor is None:
        check_executor(cfg.executor)  # Ray missing: one line, before any model loads

    # 2. Data and model files: a missing or corrupt one fails here, naming the path, before
    #    a run directory is made or any weights are read (issue 7). The env's kind checks
    #    (SQuAD: corpus and passages; ARC: data and tasks) and keeps what it loaded.
    kind = cfg.env_kind
    prepared: dict[str, Any] = {}
    if env is None:
        prepared = kind.prepare(cfg.env)

    # 3. Run directory: new, or the one being resumed. Its logs are read (and a last line
    #    a kill left unterminated is repaired) once, here, before deciding what is done.
    if at is not None:
        rundir = RunDir.at(at, cfg, command=command)
    elif resume is not None:
        rundir = RunDir.resume(resume, cfg, command=command)
    else:
        rundir = RunDir.create(cfg, command=command)
    steps = rundir.log("steps.jsonl", key="key")
    iterations = rundir.log("iterations.jsonl")

    try:
        # 4. Env: one model, shared by all agents.
        env = env or kind.build(cfg.env, **prepared)
        agents = dict(zip(names, [make_agent(spec, env) for spec in cfg.agents], strict=True))
        plan = plan_episodes(cfg, names, kind.items(env))
        done = {ep.key for ep in plan if ep.key in steps}
        print(f"run directory: {rundir.path}\nplan: {len(names)} agent(s) x {cfg.seeds} "
              f"seed(s) x {len(plan) // (len(names) * cfg.seeds)} step(s) = {len(plan)} steps"
              + (f", {len(done)} already done" if done else ""), flush=True)

        # 5. The loop. Agents resume first (saved state, plus replay of steps it missed), and
        #    iteration records a kill lost are rebuilt from the step records (issue 13,
        #    item 7). An agent proposes executor.batch steps, the executor evaluates them
        #    (here or on Ray actors, issue 6), and the agent observes them in plan order.
        history = {name: [r for r in steps if r.get("agent") == name] for name in names}
        for name, agent in agents.items():
            if restore_agent(agent, rundir.path, name, history[name],
                             action_key=kind.action_key):  # replayed: save now
                save_agent(agent, rundir.path, name, steps=len(history[name]))
        for record in missing_iterations(history, list(iterations), cfg.iteration_size,
                                         kind=kind):
            log_iteration(rundir.writer(record["agent"]), iterations.append(record))
        with _executor(cfg, executor) as ex:
            bar = tqdm(total=len(plan), initial=len(done), disable=not cfg.progress,
                       desc="steps", unit="step", dynamic_ncols=True)
            for block in plan_batches(plan, done, cfg.executor.batch):
                agent = agents[block[0].agent]
                actions, act_s = propose(agent, env, block, kind)
                outcomes = ex.evaluate(
                    env, [_job(ep, kind, a) for ep, a in zip(block, actions, strict=True)])
                for ep, action, outcome in zip(block, actions, outcomes, strict=True):
                    record = steps.append(_observe(agent, ep, action, outcome, act_s, cfg))
                    mine = history[ep.agent]
                    mine.append(record)
                    kind.log_step(rundir.writer(ep.agent), len(mine) - 1, record)
                    save_agent(agent, rundir.path, ep.agent, steps=len(mine))
                    if len(mine) % cfg.iteration_size == 0:
                        it = iteration_record(ep.agent, mine, cfg.iteration_size, kind=kind)
                        log_iteration(rundir.writer(ep.agent), iterations.append(it))
                    bar.update(1)
                    (bar.write if cfg.progress else print)(_step_line(record,
                                                                      kind.line_metric))
            bar.close()

        # 6. Summary: table per agent over every record of the run (resumed ones
        #    included), and each agent's config and final means in TensorBoard's HParams.
        summaries = summarize(list(steps), names, metrics=[m for m, _ in kind.metric_columns])
        table = summary_table(summaries, grader=kind.reward_name(cfg.env),
                              columns=kind.metric_columns)
        rundir.write_json("summary.json", {
            "agents": [s.to_dict() for s in summaries],
            "reward_grader": kind.reward_name(cfg.env),
            "dtype": _precision(env),
            "machine": machine_description(),
        })
        rundir.write_text("table.md", table + "\n")
        for s in summaries:
            rundir.add_hparams({**cfg.hparams(), "agent": s.agent}, {
                "hparams/reward": s.reward, "hparams/adapted_accuracy": s.adapted_accuracy,
                "hparams/gain": s.gain, "hparams/invalid": s.invalid}, sub=s.agent)
    finally:
        rundir.close()
    print(table)
    print(f"\nrun directory: {rundir.path}")
    return rundir.path


def _observe(agent: Agent, ep: Episode, action: Any, outcome: StepOutcome, act_s: float,
             cfg: RunConfig) -> dict[str, Any]:
    """The agent observes a step's outcome; return the step's record."""
    reward, info = outcome
    if info.get("timings") is None:
        info["timings"] = {}
    info["timings"]["act_s"] = act_s  # the agent's own time, charged by the benchmark
    agent.observe(action, reward, info)
    record = _record(ep, reward, info, cfg.log_answers, cfg.env_kind)
    counts = getattr(agent, "counts", None)
    if counts:
        record["agent_counts"] = dict(counts)
    return bound_record(record)  # a hostile action cannot make a 10 MB line (issue 13, 8)


def iteration_record(agent: str, records: list[dict[str, Any]], size: int, *,
                     kind: EnvKind | None = None) -> dict[str, Any]:
    """Reward statistics and exploration-collapse metrics of an agent's latest iteration
    (over the actions under ``kind.action_key``: templates, or ARC recipes)."""
    from selfedit.training.env_kinds import SquadKind

    kind = kind or SquadKind()
    key = kind.action_key
    block = records[-size:]
    rewards = [r["reward"] for r in block]
    templates = [r[key] for r in block if r.get(key) and not r.get("error")]
    out: dict[str, Any] = {
        "agent": agent,
        "iteration": len(records) // size - 1,
        "steps": len(records),
        "reward/mean": float(np.mean(rewards)),
        "reward/max": float(np.max(rewards)),
        "reward/best_so_far": float(max(r["reward"] for r in records)),
        "reward/invalid": sum(1 for r in block if r.get("error")),
    }
    if templates:
        out.update(kind.collapse(templates))
    return out


def missing_iterations(history: dict[str, list[dict[str, Any]]],
                       logged: list[dict[str, Any]], size: int, *,
                       kind: EnvKind | None = None) -> list[dict[str, Any]]:
    """Iteration records the step records imply but ``iterations.jsonl`` lacks.

    A kill between an agent's step line and its iteration line loses the iteration line;
    it is a function of the step records, so a resumed run writes it again, identical.
    """
    have = {(r.get("agent"), r.get("iteration")) for r in logged}
    out = []
    for agent, records in history.items():
        for i in range(len(records) // size):
            if (agent, i) not in have:
                out.append(iteration_record(agent, records[: (i + 1) * size], size,
                                            kind=kind))
    return out


_collapse_embedder = collapse_embedder  # one embedder per process (env_kinds holds it)


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / "state" / f"{name}.json"  # a checked name: no separator, no '..'


def save_agent(agent: Agent, run_dir: Path, name: str, *, steps: int) -> None:
    """Write the agent's state after its ``steps``-th step (atomic rename)."""
    path = _state_path(run_dir, name)
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, {"steps": steps, "state": agent.state_dict()}, indent=None)


def restore_agent(agent: Agent, run_dir: Path, name: str,
                  records: list[dict[str, Any]], *, action_key: str = "template") -> int:
    """Load the saved state, then let the agent observe any recorded step it missed; return
    how many it replayed.

    The step record is appended before the state is saved, so a kill between the two
    leaves the state one step behind; replaying ``observe`` on the record closes the gap
    (the action is the record's ``action_key``: its template, or its ARC recipe).
    """
    import json

    path = _state_path(run_dir, name)
    seen = 0
    if path.is_file():
        saved = json.loads(path.read_text())
        agent.load_state_dict(saved["state"])
        seen = saved["steps"]
    for record in records[seen:]:
        agent.observe(record.get(action_key), record["reward"], record)
    return len(records[seen:])


@dataclass
class AgentSummary:
    """Means over an agent's steps (an invalid step counts with its penalty reward).

    ``metrics``: the mean adapted value of each metric the env's kind tabulates (SQuAD:
    exact_match, f1, contains; ARC: tests_correct, cell_accuracy).
    """

    agent: str
    steps: int
    invalid: int
    reward: float
    reward_ci95: float  # half-width of a normal 95% interval over steps
    base_accuracy: float
    adapted_accuracy: float
    gain: float
    normalized_gain: float
    metrics: dict[str, float]
    seconds_per_step: float

    def to_dict(self) -> dict[str, Any]:
        """Flat, as ``summary.json`` has always held it: each metric a key of its own."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if name == "metrics":
                out.update(value)
            else:
                out[name] = value
        return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(records: list[dict[str, Any]], agents: list[str],
              metrics: Sequence[str] = ("exact_match", "f1", "contains")) -> list[AgentSummary]:
    """One :class:`AgentSummary` per agent; ``metrics``: the metric keys to average."""
    out = []
    for name in agents:
        rows = [r for r in records if r["agent"] == name]
        ok = [r for r in rows if not r.get("error")]
        rewards = [r["reward"] for r in rows]
        ci = float("nan")
        if len(rewards) > 1:
            ci = 1.96 * float(np.std(rewards, ddof=1)) / np.sqrt(len(rewards))
        out.append(
            AgentSummary(
                agent=name,
                steps=len(rows),
                invalid=len(rows) - len(ok),
                reward=_mean(rewards),
                reward_ci95=ci,
                base_accuracy=_mean([r["base_accuracy"] for r in ok]),
                adapted_accuracy=_mean([r["accuracy"] for r in ok]),
                gain=_mean([r["gain"] for r in ok]),
                normalized_gain=_mean([r["normalized_gain"] for r in ok]),
                metrics={m: _mean([r["metrics"][m] for r in ok]) for m in metrics},
                seconds_per_step=_mean([r["timings"]["step_s"] for r in rows]),
            )
        )
    return out


def summary_table(summaries: list[AgentSummary], *, grader: str,
                  columns: Sequence[tuple[str, str]] = (("exact_match", "EM"), ("f1", "F1"),
                                                        ("contains", "contains"))) -> str:
    """A Markdown table: one row per agent, accuracies under the reward grader, then the
    ``columns`` (metrics key, header) of the env's kind."""
    head = (
        f"| agent | steps | reward ({grader}) ± 95% CI | base | adapted | gain | norm. gain "
        + "".join(f"| {header} " for _, header in columns) + "| invalid | s/step |\n"
        + "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(columns) + "---:|---:|"
    )
    rows = [head]
    for s in summaries:
        ci = f" ± {s.reward_ci95:.3f}" if np.isfinite(s.reward_ci95) else ""
        rows.append(
            f"| {s.agent} | {s.steps} | {s.reward:.3f}{ci} | {s.base_accuracy:.3f} "
            f"| {s.adapted_accuracy:.3f} | {s.gain:+.3f} | {s.normalized_gain:+.3f} "
            + "".join(f"| {s.metrics[key]:.3f} " for key, _ in columns)
            + f"| {s.invalid} | {s.seconds_per_step:.1f} |"
        )
    return "\n".join(rows)


def _precision(env: Any) -> dict[str, Any] | None:
    """The env's weights dtype and why it was chosen (``dtype: auto``, issue 11)."""
    choice = getattr(getattr(env, "backend", None), "precision", None)
    return choice.to_dict() if choice is not None else None


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved config of a run directory, validated like any config file."""
    return load_config(RunDir.config_file(run_dir))

