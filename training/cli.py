"""``selfedit``: the command line.

    selfedit run --config configs/baselines_cpu.yaml [key=value ...] [--resume RUN_DIR]
    selfedit keys                      # every config key with its default and help
    selfedit recitation [--corpus ...] # how much reciting the passage scores per grader
    selfedit benchmark --config configs/benchmark_cpu.yaml [key=value ...] [--force]
    selfedit benchmark --resume results/benchmark_cpu   # finish a killed benchmark
    selfedit benchmark --config ... --executor ray executor.workers=2 executor.batch=2
    selfedit train --config configs/restem_cpu.yaml [key=value ...]  # ReST-EM or GRPO
    selfedit train --resume results/restem_cpu__0__<time>            # continue a killed run
    selfedit continual --config configs/continual_cpu.yaml           # forgetting matrix
    selfedit bench inner-loop          # lean inner loop vs a SEAL-style loop, FLOP fraction
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from selfedit.envs.config import ConfigError, EnvConfig, field_help
from selfedit.envs.templates import TemplateError

if TYPE_CHECKING:
    from selfedit.training.config import RunConfig

__all__ = ["main", "parse_args"]


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

    rec = sub.add_parser("recitation", help="score a model that recites the passage, per grader")
    rec.add_argument("--corpus", default="embedded", help="corpus source (default: embedded)")
    rec.add_argument("--passages", default=None, help="selection, e.g. 0:20")
    rec.add_argument("--output", type=Path, help="write the table here (Markdown)")
    rec.add_argument("--judge", default=None,
                     help="also score with an LLM judge: a model for a local judge ('embedded',"
                     " a path or hub id) or an OpenAI-compatible base URL (http...)")
    rec.add_argument("--judge-model", default="gpt-4.1", help="model name for an endpoint judge")

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
    _add_executor_option(bench)
    bench.add_argument("overrides", nargs="*", help="key=value overrides, e.g. noise_repeats=2")
    _add_training_commands(sub)
    _add_bench_commands(sub)
    return parser


def _add_bench_commands(sub: argparse._SubParsersAction) -> None:
    from selfedit.training.innerloop import InnerLoopConfig

    bench = sub.add_parser("bench", help="speed benchmarks (inner-loop)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    inner = kinds.add_parser(
        "inner-loop", help="the project's inner loop against a SEAL-style reference on the "
        "same work, matmul peak, FLOP fraction, generation tokens/s, memory",
        description="Writes <output>/report.md and report.json (see training/innerloop.py).")
    d = InnerLoopConfig()
    inner.add_argument("--model", default=d.model, help="model (default: embedded)")
    inner.add_argument("--dtypes", default=",".join(d.dtypes),
                       help="precisions to compare, the first also runs the reference")
    inner.add_argument("--corpus", default=d.corpus)
    inner.add_argument("--passages", default=d.passages, help="selection, e.g. 0:3")
    inner.add_argument("--template", default=d.template, help="human baseline whose "
                       "instruction and hyperparameters make the work")
    inner.add_argument("--num-epochs", type=int, default=None,
                       help="override the template's epochs (default: its own)")
    inner.add_argument("--repeats", type=int, default=d.repeats,
                       help="requests per passage (later ones find the baseline cached)")
    inner.add_argument("--reference-requests", type=int, default=d.reference_requests,
                       help="SEAL-style requests to time (0 skips the reference)")
    inner.add_argument("--attentions", default=",".join(d.attentions),
                       help="attention kernels of the lean rows (sdpa, eager); the first"
                       " also runs the reference")
    inner.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size)
    inner.add_argument("--micro-batch-sizes", default=",".join(map(str, d.micro_batch_sizes)),
                       help="micro-batch sizes of the training-throughput sweep")
    inner.add_argument("--completion-max-tokens", type=int, default=d.completion_max_tokens)
    inner.add_argument("--matmul-size", type=int, default=d.matmul_size)
    inner.add_argument("--no-profile", dest="profile", action="store_false",
                       help="skip the profiled training epoch (where the time goes)")
    inner.add_argument("--pad-to", type=int, default=d.pad_to,
                       help="the reference's fixed sequence length (SEAL pads to 2048)")
    inner.add_argument("--threads", type=int, default=None, help="torch threads")
    inner.add_argument("--output", default=d.output, help="report directory")
    inner.add_argument("--report-only", type=Path, metavar="DIR",
                       help="rebuild DIR/report.md from DIR/report.json (no model is loaded)")
    inner.add_argument("--seed", type=int, default=d.seed)


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.innerloop import (
        InnerLoopConfig,
        rebuild_report,
        run_inner_loop_bench,
    )

    if args.report_only is not None:
        print(rebuild_report(args.report_only))
        return 0
    try:
        sizes = [int(x) for x in args.micro_batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--micro-batch-sizes must be integers like 1,4,16, got "
                          f"{args.micro_batch_sizes!r}") from None
    cfg = InnerLoopConfig(
        model=args.model, dtypes=[x.strip() for x in args.dtypes.split(",") if x.strip()],
        corpus=args.corpus, passages=args.passages, template=args.template,
        attentions=[x.strip() for x in args.attentions.split(",") if x.strip()],
        num_epochs=args.num_epochs, repeats=args.repeats,
        reference_requests=args.reference_requests, micro_batch_size=args.micro_batch_size,
        micro_batch_sizes=sizes, completion_max_tokens=args.completion_max_tokens,
        matmul_size=args.matmul_size, profile=args.profile, pad_to=args.pad_to,
        threads=args.threads,
        output=args.output, seed=args.seed,
    )
    run_inner_loop_bench(cfg, command=shlex.join(["selfedit", *argv]))
    return 0


def _benchmark_keys() -> str:
    from selfedit.training.benchmark import BenchmarkConfig

    lines = ["benchmark keys (besides every key of `selfedit keys`):"]
    for name, default, text in field_help(BenchmarkConfig):
        if name != "run":
            lines.append(f"  {name} = {default}\n      {text}")
    return "\n".join(lines)


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


def _benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    from selfedit.training.benchmark import (
        BudgetError,
        benchmark,
        load_benchmark_config,
        write_report,
    )

    try:
        if args.report_only is not None:
            if args.config or args.overrides or args.resume or args.force or args.executor:
                raise ConfigError("--report-only reads the directory's own records and config;"
                                  " drop the other options")
            print(f"report: {write_report(args.report_only)}")
            return 0
        command = shlex.join(["selfedit", *argv])
        if args.resume is not None:
            if args.config or args.overrides or args.force:
                raise ConfigError("--resume uses the directory's own benchmark.yaml; drop "
                                  "--config, --force and overrides")
            if not (args.resume / "benchmark.yaml").is_file():
                raise ConfigError(f"--resume {args.resume}: no benchmark.yaml there; is it a "
                                  "benchmark directory?")
            cfg = load_benchmark_config(args.resume / "benchmark.yaml")
            _with_executor(cfg.run, args.executor)
            benchmark(cfg, resume=args.resume, command=command)
        else:
            if args.config is None:
                raise ConfigError("give --config configs/benchmark_<...>.yaml (or --resume DIR)")
            cfg = load_benchmark_config(args.config, args.overrides)
            _with_executor(cfg.run, args.executor)
            benchmark(cfg, force=args.force, command=command)
    except BudgetError as err:
        print(f"selfedit: error: {err}", file=sys.stderr)
        return 2
    return 0


def _keys(markdown: bool = False) -> str:
    from selfedit.training.config import ExecutorConfig, RunConfig

    sections = {"env": EnvConfig, "executor": ExecutorConfig}
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


def _judge(where: str, model: str) -> object:
    from selfedit.envs.grading import LLMJudge

    if where.startswith(("http://", "https://")):
        return LLMJudge(base_url=where, model=model)
    from selfedit.envs.backend import HFBackend

    backend = HFBackend(where)
    return LLMJudge(generate=lambda texts, n: backend.generate(texts, max_new_tokens=n))


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
    from selfedit.training.restem import RestemConfig, SFTSettings

    groups = ([("restem keys", RestemConfig), ("restem sft.* keys", SFTSettings),
               ("grpo keys", GRPORunConfig)] if which == "training"
              else [("continual keys", ContinualConfig)])
    lines = []
    for title, cls in groups:
        lines.append(f"{title} (env.* keys: see `selfedit keys`):")
        prefix = "sft." if cls is SFTSettings else ""
        for name, default, text in field_help(cls):
            if name not in ("env", "sft"):
                lines.append(f"  {prefix}{name} = {default}\n      {text}")
    return "\n".join(lines)


def _training(args: argparse.Namespace, argv: list[str]) -> int:
    command = shlex.join(["selfedit", *argv])
    if args.command == "continual":
        from selfedit.training.continual import load_continual_config, run_continual

        run_continual(load_continual_config(args.config, args.overrides), command=command)
        return 0
    from selfedit.training.grpo import train_grpo
    from selfedit.training.restem import load_train_config, train_restem

    if args.resume is not None:
        if args.config or args.overrides:
            raise ConfigError("--resume uses the run's own config.yaml; drop --config and "
                              "overrides")
        if not (args.resume / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; is it a run "
                              "directory?")
        cfg = load_train_config(args.resume / "config.yaml")
    else:
        if args.config is None:
            raise ConfigError("give --config configs/restem_<...>.yaml (or --resume RUN_DIR)")
        cfg = load_train_config(args.config, args.overrides)
    trainer = train_grpo if cfg.algorithm == "grpo" else train_restem
    trainer(cfg, resume=args.resume, command=command)
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
    args = parse_args(argv)
    try:
        if args.command == "keys":
            print(_keys(args.markdown))
        elif args.command == "run":
            from selfedit.training.config import load_config
            from selfedit.training.run import load_run_config, run

            if args.resume is not None:
                if args.config or args.overrides:
                    raise ConfigError(
                        "--resume uses the run's own config.yaml; drop --config and overrides"
                    )
                if not (args.resume / "config.yaml").is_file():
                    raise ConfigError(f"--resume {args.resume}: no config.yaml there")
                cfg = load_run_config(args.resume)
            else:
                cfg = load_config(args.config, args.overrides)
            run(_with_executor(cfg, args.executor), resume=args.resume)
        elif args.command == "benchmark":
            return _benchmark(args, list(argv) if argv is not None else sys.argv[1:])
        elif args.command == "bench":
            return _bench(args, list(argv) if argv is not None else sys.argv[1:])
        elif args.command in ("train", "continual"):
            return _training(args, list(argv) if argv is not None else sys.argv[1:])
        elif args.command == "recitation":
            from selfedit.training.recitation import recitation_report

            judge = _judge(args.judge, args.judge_model) if args.judge else None
            table = recitation_report(args.corpus, args.passages, judge=judge)
            print(table)
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(table + "\n")
    except (ConfigError, TemplateError, FileNotFoundError) as err:
        print(f"selfedit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
