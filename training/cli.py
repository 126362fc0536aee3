"""``selfedit``: the command line.

    selfedit run --config configs/baselines_cpu.yaml [key=value ...] [--resume RUN_DIR]
    selfedit keys                      # every config key with its default and help
    selfedit recitation [--corpus ...] # how much reciting the passage scores per grader
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfedit.envs.config import ConfigError, EnvConfig, field_help
from selfedit.envs.templates import TemplateError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfedit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agents through the env and write a results directory")
    run.add_argument("--config", type=Path, help="YAML config (see configs/)")
    run.add_argument("--resume", type=Path,
                     help="continue a run directory, skipping finished steps")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. env.passages=0:4")

    keys = sub.add_parser("keys", help="list every config key with its default and help")
    keys.add_argument("--markdown", action="store_true", help="as the README's Markdown table")

    rec = sub.add_parser("recitation", help="score a model that recites the passage, per grader")
    rec.add_argument("--corpus", default="embedded", help="corpus source (default: embedded)")
    rec.add_argument("--passages", default=None, help="selection, e.g. 0:20")
    rec.add_argument("--output", type=Path, help="write the table here (Markdown)")
    return parser


def _keys(markdown: bool = False) -> str:
    from selfedit.training.config import RunConfig

    if markdown:
        rows = ["| key | default | meaning |", "|---|---|---|"]
        for name, default, text in field_help(RunConfig):
            if name != "env":
                rows.append(f"| `{name}` | `{default}` | {text} |")
        for name, default, text in field_help(EnvConfig):
            rows.append(f"| `env.{name}` | `{default}` | {text} |")
        return "\n".join(rows)
    lines = ["run keys:"]
    for name, default, text in field_help(RunConfig):
        if name != "env":
            lines.append(f"  {name} = {default}\n      {text}")
    lines.append("env keys (under env:):")
    for name, default, text in field_help(EnvConfig):
        lines.append(f"  env.{name} = {default}\n      {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
            run(cfg, resume=args.resume)
        elif args.command == "recitation":
            from selfedit.training.recitation import recitation_report

            table = recitation_report(args.corpus, args.passages)
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
