"""``selfedit``: the command line.

    selfedit run --config configs/baselines_cpu.yaml [key=value ...] [--resume RUN_DIR]
    selfedit keys                      # every config key with its default and help
    selfedit recitation [--corpus ...] # how much answers that need no knowledge score
    selfedit benchmark --config configs/benchmark_cpu.yaml [key=value ...] [--force]
    selfedit benchmark --resume results/benchmark_cpu   # finish a killed benchmark
    selfedit benchmark --config ... --executor ray executor.workers=2 executor.batch=2
    selfedit regrade results/benchmark_cpu --output DIR  # kept answers, today's graders
    selfedit train --config configs/restem_cpu.yaml [key=value ...]  # ReST-EM or GRPO
    selfedit train --resume results/restem_cpu__0__<time>            # continue a killed run
    selfedit continual --config configs/continual_cpu.yaml           # forgetting matrix
    selfedit arc-survey --config configs/arc_cpu.yaml  # which ARC tasks any recipe solves
    selfedit bench inner-loop          # lean inner loop vs a SEAL-style loop, FLOP fraction
    selfedit bench train-attention     # training tokens/s under the sdpa and eager kernels

``env_id: selfedit/ARC-v0`` in a config runs ``selfedit run`` and ``selfedit train``
(ReST-EM) on SEAL's ARC domain; ``selfedit keys --env selfedit/ARC-v0`` lists its env keys.

Every command reads its settings the same way (:func:`~selfedit.training.experiment
.load_experiment`): an optional YAML file (``--config``), then ``key=value`` overrides
(dotted keys, values parsed as YAML), then, for ``recitation`` and ``bench inner-loop``,
their ``--flags``.

Size (~510 lines): argument parsing for every subcommand; each handler only parses and
calls into its module.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfedit.envs.config import ConfigError, field_help
from selfedit.envs.templates import TemplateError
from selfedit.training.env_kinds import ENV_KINDS, SQUAD_ENV_ID, check_supported, env_kind
from selfedit.training.experiment import param

if TYPE_CHECKING:
    from selfedit.training.config import RunConfig

__all__ = ["RecitationArgs", "main", "parse_args"]

NO_CONFIG = ("selfedit {command} needs a config: {example}; or give key=value overrides on "
             "top of the built-in defaults (`selfedit keys` lists them)")
EXAMPLES = {"run": "`selfedit run --config configs/baselines_cpu.yaml` runs the main job "
                   "(five baselines, ~8 min on 2 CPU cores with native bf16,"
                   " ~13 on AVX2-only ones)",
            "continual": "`selfedit continual --config configs/continual_cpu.yaml`"}


@dataclasses.dataclass
class RecitationArgs:
    """What ``selfedit recitation`` scores (flags, ``--config`` or ``key=value``)."""

    corpus: str = param("embedded", "corpus source")
    passages: str | None = param(None, "selection, e.g. 0:20 (null = all)")
    output: str | None = param(None, "write the table here (Markdown)")
    judge: str | None = param(None, "also score with an LLM judge: a model for a local judge "
                              "('embedded', a path or hub id) or an OpenAI-compatible base "
                              "URL (http...)")
    judge_model: str = param("gpt-4.1", "model name for an endpoint judge")
    end_to_end: str | None = param(None, "instead of scoring answers: train the fact-list "
                                   "attacks into the model through the env (both action "
                                   "modes) and write the table to this directory (resumes "
                                   "row by row)")
    epochs: int | None = param(None, "end to end: epochs of every update (default SEAL's 10)")
    regrade: bool = param(False, "end to end: re-grade the rows already in the directory "
                          "with today's graders, training nothing")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfedit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agents through the env and write a results directory")
    run.add_argument("--config", type=Path, help="YAML config (see configs/)")
    run.add_argument("--resume", type=Path,
                     help="continue a run directory, skipping finished steps")
    _add_executor_option(run)
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. env.passages=0:4")

    keys = sub.add_parser("keys", help="list every config key with its default and help")
    keys.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    keys.add_argument("--env", default=SQUAD_ENV_ID, metavar="ENV_ID",
                      help=f"whose env.* keys to list: {', '.join(ENV_KINDS)} "
                      f"(default {SQUAD_ENV_ID})")

    rec = sub.add_parser("recitation", help="score answers that need no knowledge of the "
                         "question (reciting the passage, ...) with every grader")
    rec.add_argument("--config", type=Path, help="YAML file with the keys below")
    _add_dataclass_flags(rec, RecitationArgs)
    rec.add_argument("overrides", nargs="*", help="key=value overrides, e.g. passages=0:20")

    from selfedit.training.graders import add_subcommand as add_graders
    from selfedit.training.regrade import add_subcommand as add_regrade

    add_graders(sub)
    add_regrade(sub)

    bench = sub.add_parser(
        "benchmark", help="agents side by side on equal budgets: table with CIs, paired "
        "tests, noise, plots, report in <output_dir>/<name>/",
        description="Run every agent of the config on the same passages and seeds with the "
        "same budget of env evaluations; write report.md, table.csv, comparisons.csv, "
        "summary.json, plots/*.png and TensorBoard runs to <output_dir>/<name>/.",
        epilog=_benchmark_keys(), formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--config", type=Path, help="YAML config (configs/benchmark_*.yaml)")
    bench.add_argument("--resume", type=Path, metavar="DIR",
                       help="finish a benchmark directory with its own config, keeping "
                       "finished steps")
    bench.add_argument("--force", action="store_true",
                       help="delete an existing benchmark directory of the same name first")
    bench.add_argument("--report-only", type=Path, metavar="DIR",
                       help="rebuild the report and plots of a benchmark directory from its "
                       "records (no model is loaded)")
    bench.add_argument("--plan", type=Path, metavar="DIR",
                       help="from a finished benchmark's paired noise, how many passages a "
                       "--target-difference needs (no model is loaded)")
    bench.add_argument("--target-difference", type=float, default=0.05, metavar="D",
                       help="with --plan: the accuracy difference to detect (default 0.05)")
    _add_executor_option(bench)
    bench.add_argument("overrides", nargs="*", help="key=value overrides, e.g. noise_repeats=2")
    _add_training_commands(sub)
    survey = sub.add_parser(
        "arc-survey", add_help=False,
        help="ARC (selfedit/ARC-v0): baselines, the model's own recipes, an oracle search and "
        "one ReST-EM round on the tasks of env.tasks (`selfedit arc-survey --help`)")
    survey.add_argument("rest", nargs=argparse.REMAINDER)  # main() hands them to the survey
    _add_bench_commands(sub)
    return parser


# --- flags generated from a config dataclass --------------------------------------------------
def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type,
                         helps: dict[str, str] | None = None) -> None:
    """One ``--flag`` per field (``--num-epochs`` for ``num_epochs``); lists take commas,
    booleans get ``--no-<flag>``. Flags left out of the command keep the file's value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        text = (helps or {}).get(f.name) or f.metadata.get("help", "")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        text = f"{text} (default: {default})" if text else f"default: {default}"
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=text,
                                metavar=f.name.upper())


def _flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given, converted to their fields' types (``1,4,16`` for a list of ints)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value, hint = getattr(args, f.name), hints[f.name]
        kind = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None -> X
            kind = next(a for a in typing.get_args(hint) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        try:
            if typing.get_origin(kind) is list:
                (item,) = typing.get_args(kind) or (str,)
                value = [item(x.strip()) for x in value.split(",") if x.strip()]
            elif kind in (int, float) and isinstance(value, str):
                value = kind(value)
        except ValueError:
            raise ConfigError(f"{flag} expects {getattr(kind, '__name__', kind)}, got "
                              f"{value!r} (lists are comma-separated, e.g. 1,4,16)") from None
        out[f.name] = value
    return out


def _add_bench_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="speed benchmarks (inner-loop, train-attention)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    inner = _bench_parser(
        kinds, "inner-loop", help="the project's inner loop against a SEAL-style reference on "
        "the same work, matmul peak, FLOP fraction, generation tokens/s, memory",
        module="innerloop", example="repeats=3")
    inner.add_argument("--report-only", type=Path, metavar="DIR",
                       help="rebuild DIR/report.md from DIR/report.json (no model is loaded)")
    _bench_parser(kinds, "train-attention", help="joint LoRA training under the sdpa and eager "
                  "attention kernels, alternating: tokens/s and their ratio on this machine",
                  module="attention_bench", example="repeats=5")


def _benches() -> dict[str, tuple[type, Any]]:
    """Each ``selfedit bench`` kind: its config dataclass and the function that runs it."""
    from selfedit.training.attention_bench import TrainAttentionConfig, run_train_attention_bench
    from selfedit.training.innerloop import InnerLoopConfig, run_inner_loop_bench

    return {"inner-loop": (InnerLoopConfig, run_inner_loop_bench),
            "train-attention": (TrainAttentionConfig, run_train_attention_bench)}


def _bench_parser(kinds: argparse._SubParsersAction, name: str, *, help: str,  # noqa: A002
                  module: str, example: str) -> argparse.ArgumentParser:
    """A ``selfedit bench`` kind: --config, one flag per config field, key=value overrides."""
    parser = kinds.add_parser(name, help=help, description="Writes <output>/report.md and "
                              f"report.json (see training/{module}.py).")
    parser.add_argument("--config", type=Path, help="YAML file with the keys below")
    _add_dataclass_flags(parser, _benches()[name][0])
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    return parser


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.experiment import load_experiment
    from selfedit.training.innerloop import rebuild_report

    if getattr(args, "report_only", None) is not None:
        print(rebuild_report(args.report_only))
        return 0
    config_class, run = _benches()[args.bench]
    cfg = load_experiment(config_class, args.config, args.overrides,
                          values=_flag_values(args, config_class))
    run(cfg, command=shlex.join(["selfedit", *argv]))
    return 0


def _recitation(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.experiment import load_experiment
    from selfedit.training.recitation import end_to_end_command, recitation_report

    cfg = load_experiment(RecitationArgs, args.config, args.overrides,
                          values=_flag_values(args, RecitationArgs))
    if cfg.end_to_end:
        print(end_to_end_command(cfg.corpus, cfg.passages, Path(cfg.end_to_end),
                                 epochs=cfg.epochs, regrade_only=cfg.regrade,
                                 command=shlex.join(["selfedit", *argv])))
        return 0
    from selfedit.envs.judge import judge_from

    judge = judge_from(cfg.judge, model=cfg.judge_model) if cfg.judge else None
    table = recitation_report(cfg.corpus, cfg.passages, judge=judge)
    print(table)
    if cfg.output:
        output = Path(cfg.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n")
    return 0


# --- run ------------------------------------------------------------------------------------
def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.config import RunConfig
    from selfedit.training.experiment import load_experiment
    from selfedit.training.run import load_run_config, run

    if args.resume is not None:
        _no_config_with_resume(args)
        cfg = load_run_config(args.resume)
    else:
        cfg = load_experiment(RunConfig, *_config_or_overrides(args))
    run(_with_executor(cfg, args.executor), resume=args.resume,
        command=shlex.join(["selfedit", *argv]))
    return 0


def _config_or_overrides(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """``--config`` and the overrides; neither is an error: no silent default job."""
    if args.config is None:
        if not args.overrides:
            raise ConfigError(NO_CONFIG.format(command=args.command,
                                               example=EXAMPLES[args.command]))
        print(f"selfedit: no --config: the built-in defaults with {len(args.overrides)} "
              "override(s)", flush=True)
    return args.config, args.overrides


def _no_config_with_resume(args: argparse.Namespace, name: str = "config.yaml") -> None:
    if args.config or args.overrides or getattr(args, "force", False):
        raise ConfigError(f"--resume uses the run's own {name}; drop --config and overrides"
                          + (" and --force" if getattr(args, "force", False) else ""))


def _add_executor_option(parser: argparse.ArgumentParser) -> None:
    from selfedit.training.config import EXECUTOR_TYPES

    parser.add_argument(
        "--executor", choices=EXECUTOR_TYPES,
        help="where env steps run: serial (here) or ray (Ray actors; executor.workers, "
        "executor.batch, executor.address as key=value). Sets executor.type; allowed with "
        "--resume, as it does not change results")


def _with_executor(cfg: RunConfig, kind: str | None) -> RunConfig:
    """``cfg`` (a RunConfig) with ``executor.type`` set from ``--executor``, if given."""
    if kind is not None:
        cfg.executor = dataclasses.replace(cfg.executor, type=kind)
    return cfg


# --- benchmark ------------------------------------------------------------------------------
def _benchmark_keys() -> str:
    from selfedit.training.benchmark import BenchmarkConfig
    from selfedit.training.config import RunConfig

    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    lines = ["benchmark keys (besides every key of `selfedit keys`):"]
    for name, default, text in field_help(BenchmarkConfig):
        if name not in run_keys:
            lines.append(f"  {name} = {default}\n      {text}")
    return "\n".join(lines)


# The benchmark's directory, budgets and report read SQuAD's env keys (corpus, passages,
# reward_grader, completions_per_passage) in benchmark.py and benchmark_report.py; until they
# ask the env's kind instead, it runs on SQuAD only (the runner it calls runs both).
BENCHMARK_ENVS = (SQUAD_ENV_ID,)


def _benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.benchmark import (
        BenchmarkConfig,
        BudgetError,
        benchmark,
        write_report,
    )
    from selfedit.training.experiment import load_experiment
    from selfedit.training.rundir import RunDir

    try:
        if args.plan is not None:
            from selfedit.training.benchmark_report import plan_passages

            if args.config or args.overrides or args.resume or args.force or args.executor:
                raise ConfigError("--plan reads the directory's own records and config; drop"
                                  " the other options")
            try:
                print(plan_passages(args.plan, args.target_difference))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            return 0
        if args.report_only is not None:
            if args.config or args.overrides or args.resume or args.force or args.executor:
                raise ConfigError("--report-only reads the directory's own records and config;"
                                  " drop the other options")
            print(f"report: {write_report(args.report_only)}")
            return 0
        command = shlex.join(["selfedit", *argv])
        if args.resume is not None:
            _no_config_with_resume(args, "benchmark.yaml")
            cfg = load_experiment(BenchmarkConfig, RunDir.config_file(
                args.resume, config_name="benchmark.yaml", kind="benchmark directory"))
            benchmark(_with_executor(cfg, args.executor), resume=args.resume, command=command)
        else:
            if args.config is None:
                raise ConfigError("give --config configs/benchmark_<...>.yaml (or --resume DIR)")
            cfg = load_experiment(BenchmarkConfig, args.config, args.overrides)
            check_supported(cfg.env_id, BENCHMARK_ENVS, command="selfedit benchmark")
            benchmark(_with_executor(cfg, args.executor), force=args.force, command=command)
    except BudgetError as err:
        print(f"selfedit: error: {err}", file=sys.stderr)
        return 2
    return 0


# --- keys -----------------------------------------------------------------------------------
def _keys(markdown: bool = False, env_id: str = SQUAD_ENV_ID) -> str:
    from selfedit.training.config import ExecutorConfig, RunConfig

    sections = {"env": env_kind(env_id).config_class(), "executor": ExecutorConfig}
    if markdown:
        rows = ["| key | default | meaning |", "|---|---|---|"]
        for name, default, text in field_help(RunConfig):
            if name not in sections:
                rows.append(f"| `{name}` | `{default}` | {text} |")
        for section, cls in sections.items():
            for name, default, text in field_help(cls):
                rows.append(f"| `{section}.{name}` | `{default}` | {text} |")
        return "\n".join(rows)
    lines = ["run keys:"]
    for name, default, text in field_help(RunConfig):
        if name not in sections:
            lines.append(f"  {name} = {default}\n      {text}")
    for section, cls in sections.items():
        lines.append(f"{section} keys (under {section}:):")
        for name, default, text in field_help(cls):
            lines.append(f"  {section}.{name} = {default}\n      {text}")
    return "\n".join(lines)


# --- policy training (issue 4): selfedit train / selfedit continual ---
def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train the template policy: ReST-EM or GRPO (the config's algorithm)",
        description="Train the template-writing policy against the env: ReST-EM "
        "(algorithm: restem) or GRPO through TRL (algorithm: grpo). Writes "
        "<output_dir>/<name>__<seed>__<time>/ with config.yaml, command.txt, iterations.jsonl, "
        "evaluations.jsonl, checkpoints/, heldout.md, summary.json and tb/.",
        epilog=_config_keys("training"), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", type=Path, help="YAML config (configs/restem_*.yaml, "
                       "configs/grpo_*.yaml)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue a killed run with its own config.yaml; finished env "
                       "evaluations are not repeated")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iterations=1")
    cont = sub.add_parser(
        "continual", help="continual self-editing: adapters accumulate over a passage "
        "sequence; writes the forgetting matrix",
        epilog=_config_keys("continual"), formatter_class=argparse.RawDescriptionHelpFormatter)
    cont.add_argument("--config", type=Path, help="YAML config (configs/continual_cpu.yaml)")
    cont.add_argument("overrides", nargs="*", help="key=value overrides, e.g. passages=0:3")


def _config_keys(which: str) -> str:
    from selfedit.training.continual import ContinualConfig
    from selfedit.training.grpo import GRPORunConfig
    from selfedit.training.policy_config import PolicyRunConfig
    from selfedit.training.restem import RestemConfig
    from selfedit.training.sft import SFTSettings

    if which != "training":
        return _key_lines("continual keys", ContinualConfig)
    shared = {name: default for name, default, _ in field_help(PolicyRunConfig)}
    return "\n".join([
        _key_lines("keys of every training run", PolicyRunConfig),
        _key_lines("restem keys (algorithm: restem)", RestemConfig, skip=shared),
        _key_lines("restem sft.* keys", SFTSettings, prefix="sft."),
        _key_lines("grpo keys (algorithm: grpo)", GRPORunConfig, skip=shared)])


def _key_lines(title: str, cls: type, *, skip: dict[str, str] | None = None,
               prefix: str = "") -> str:
    """``title`` and each key of ``cls`` with its default and help; a key in ``skip`` only
    where its default differs."""
    lines = [f"{title} (env.* keys: see `selfedit keys`):"]
    for name, default, text in field_help(cls):
        if name not in ("env", "sft") and (skip or {}).get(name) != default:
            lines.append(f"  {prefix}{name} = {default}\n      {text}")
    return "\n".join(lines)


def _training(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.experiment import load_experiment

    command = shlex.join(["selfedit", *argv])
    if args.command == "continual":
        from selfedit.training.continual import ContinualConfig, run_continual

        run_continual(load_experiment(ContinualConfig, *_config_or_overrides(args)),
                      command=command)
        return 0
    from selfedit.training.policy_config import PolicyRunConfig, train
    from selfedit.training.rundir import RunDir

    if args.resume is not None:
        _no_config_with_resume(args)
        cfg = load_experiment(PolicyRunConfig, RunDir.config_file(args.resume))
    else:
        if args.config is None:
            raise ConfigError("give --config configs/restem_<...>.yaml (or --resume RUN_DIR)")
        cfg = load_experiment(PolicyRunConfig, args.config, args.overrides)
    train(cfg, resume=args.resume, command=command)
    return 0
# --- end policy training ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may come before or after options.

    argparse stops filling a ``nargs="*"`` positional at the first option, so in
    ``run --config c.yaml a=1 --executor ray b=2`` it would reject ``b=2``; such leftovers
    are overrides too.
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e
                                                 for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    words = list(argv) if argv is not None else sys.argv[1:]
    if words[:1] == ["arc-survey"]:  # its own parser and flags (training/arc_survey.py)
        from selfedit.training.arc_survey import main as survey

        return survey(words[1:])
    args = parse_args(argv)
    try:
        if args.command == "keys":
            print(_keys(args.markdown, args.env))
        elif args.command == "run":
            return _run(args, words)
        elif args.command == "benchmark":
            return _benchmark(args, words)
        elif args.command == "bench":
            return _bench(args, words)
        elif args.command in ("train", "continual"):
            return _training(args, words)
        elif args.command == "recitation":
            return _recitation(args, words)
        elif args.command == "graders":
            from selfedit.training.graders import main as graders

            return graders(args)
        elif args.command == "regrade":
            from selfedit.training.regrade import main as regrade

            return regrade(args)
    except (ConfigError, TemplateError, FileNotFoundError) as err:
        print(f"selfedit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
