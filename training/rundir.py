"""One run directory: create or resume it, write into it safely, log to TensorBoard from it.

Every runner (``selfedit run``, ``train``, ``continual``, ``benchmark``) writes through a
:class:`RunDir` (CleanRL's ``runs/{exp}__{seed}__{time}``, STYLE.md section 7):

- **create** ``<output_dir>/<name>__<seed>__<time>/`` (or a fixed path, as the benchmark's
  ``<output_dir>/<name>/``) with the resolved ``config.yaml`` and ``command.txt``; or
  **resume** an existing one, which must hold its config file (one-line errors otherwise);
- every start or resume appends a *session* (command, time, package versions, machine) to
  ``environment.json``;
- :meth:`RunDir.write_json` / :meth:`RunDir.write_text` write atomically;
  :meth:`RunDir.log` opens a JSON Lines file once per run, repaired on open
  (:class:`~selfedit.training.jsonio.JsonlLog`);
- :meth:`RunDir.writer` owns the TensorBoard writers (``tb/`` or ``tb/<sub>/``);
  :meth:`RunDir.add_hparams` records the config and final metrics for TensorBoard's HParams
  dashboard; ``report_to: [wandb]`` mirrors the TensorBoard events to Weights & Biases
  (imported only then; a missing package is a one-line error before anything is written).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from selfedit.envs.config import ConfigError
from selfedit.training.jsonio import JsonlLog, stable_hash, write_json_atomic
from selfedit.training.provenance import command_line, session

__all__ = ["RunDir", "check_trackers"]


def check_trackers(report_to: list[str]) -> None:
    """Fail now, in one line, if a tracker asked for is not installed."""
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to: [wandb] needs the wandb package: pip install wandb "
                          "(or set report_to: [])")


def _mkdir(path: Path, *, key: str, exist_ok: bool) -> None:
    """Make ``path`` (and its parents) or say in one line why it cannot be made."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{key}: {probe} is a file, not a directory; choose another {key}")
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as err:
        raise ConfigError(f"{key}: cannot create {path} ({err.strerror or err}); choose a "
                          f"writable {key}") from None


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class RunDir:
    """A run's directory and what writes into it. Use :meth:`create`, :meth:`resume` or
    :meth:`at`; close it (or use ``with``) to flush logs and writers.

    Args:
        path: the directory (it exists).
        tensorboard: whether :meth:`writer` writes events (False: it returns None).
        report_to: trackers besides TensorBoard (``["wandb"]``).
        config: the resolved config, for the tracker's record of the run.
    """

    def __init__(self, path: Path, *, tensorboard: bool = True,
                 report_to: list[str] | tuple[str, ...] = (),
                 config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard
        self._writers: dict[str, Any] = {}
        self._logs: dict[str, JsonlLog] = {}
        self._tracker: Any = None
        if "wandb" in report_to:
            self._tracker = self._start_wandb(config or {})

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: Any, *, command: str | None = None,
               config_name: str = "config.yaml") -> RunDir:
        """A new ``<output_dir>/<name>__<seed>__<time>/`` for ``cfg`` (an ExperimentConfig)."""
        check_trackers(cfg.report_to)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(cfg.output_dir) / f"{cfg.name}__{cfg.seed}__{stamp}"
        path, n = base, 1
        while True:  # two runs started in the same second get -2, -3, ...
            try:
                _mkdir(path, key="output_dir", exist_ok=False)
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        return cls._start(path, cfg, command=command, config_name=config_name, new=True)

    @classmethod
    def resume(cls, path: Path, cfg: Any, *, command: str | None = None,
               config_name: str = "config.yaml") -> RunDir:
        """An existing run directory, continued with ``cfg`` (normally its own config)."""
        cls.config_file(path, config_name=config_name,
                        kind="benchmark directory" if config_name == "benchmark.yaml"
                        else "run directory")
        check_trackers(cfg.report_to)
        return cls._start(Path(path), cfg, command=command, config_name=config_name,
                          new=False)

    @classmethod
    def at(cls, path: Path, cfg: Any, *, command: str | None = None,
           config_name: str = "config.yaml", config: dict[str, Any] | None = None) -> RunDir:
        """A run directory at a fixed path: created with ``cfg`` if it has no config file
        yet, resumed otherwise (the benchmark's ``<name>/``, ``run/`` and ``noise/``)."""
        path = Path(path)
        if (path / config_name).is_file():
            return cls.resume(path, cfg, command=command, config_name=config_name)
        check_trackers(cfg.report_to)
        _mkdir(path, key="output_dir", exist_ok=True)
        return cls._start(path, cfg, command=command, config_name=config_name, new=True,
                          config=config)

    @staticmethod
    def config_file(path: Path, *, config_name: str = "config.yaml", flag: str = "--resume",
                    kind: str = "run directory") -> Path:
        """The config file of an existing run directory, or a one-line error saying why not."""
        path = Path(path)
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except (ValueError, OSError) as err:
            raise ConfigError(f"{flag} {str(path)!r}: {err}") from None
        if not exists:
            raise ConfigError(f"{flag} {path}: no such directory")
        if not is_dir:
            raise ConfigError(f"{flag} {path}: not a directory")
        if not (path / config_name).is_file():
            raise ConfigError(f"{flag} {path}: not a {kind} (it holds no {config_name})")
        return path / config_name

    @classmethod
    def _start(cls, path: Path, cfg: Any, *, command: str | None, config_name: str,
               new: bool, config: dict[str, Any] | None = None) -> RunDir:
        config = config if config is not None else cfg.to_dict()
        run = cls(path, tensorboard=cfg.tensorboard, report_to=cfg.report_to, config=config)
        command = command or command_line()
        if new:
            run.write_text(config_name, yaml.safe_dump(config, sort_keys=False,
                                                       allow_unicode=True))
            run.write_text("command.txt", command + "\n")
        sessions = run.read_json("environment.json", [])
        run.write_json("environment.json", [*sessions, session(command)])
        return run

    # -- files ---------------------------------------------------------------------------
    def write_json(self, name: str, payload: Any, *, indent: int = 2) -> Path:
        return write_json_atomic(self.path / name, payload, indent=indent)

    def write_text(self, name: str, text: str) -> Path:
        _atomic_text(self.path / name, text)
        return self.path / name

    def read_json(self, name: str, default: Any = None) -> Any:
        import json

        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default

    def log(self, name: str, *, key: str | None = None) -> JsonlLog:
        """The JSON Lines file ``name``, opened (and repaired) once for this run."""
        if name not in self._logs:
            self._logs[name] = JsonlLog(self.path / name, key=key)
        return self._logs[name]

    # -- TensorBoard and trackers ----------------------------------------------------------
    def writer(self, sub: str = "") -> Any:
        """The TensorBoard writer of ``tb/`` or ``tb/<sub>/`` (None when tensorboard is off)."""
        if not self.tensorboard:
            return None
        if sub not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[sub] = SummaryWriter(log_dir=str(self.path / "tb" / sub))
        return self._writers[sub]

    def add_hparams(self, hparams: dict[str, Any], metrics: dict[str, Any], *, sub: str = "",
                    step: int = 0) -> None:
        """The run's settings and final metrics for TensorBoard's HParams dashboard.

        Written into the writer's own directory (``torch``'s ``add_hparams`` would make a
        sub-run), so each run (or agent) is one row; non-finite metrics are left out.
        """
        writer = self.writer(sub)
        if writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: v for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
                  for k, v in hparams.items()}
        for summary in hparams_summary(values, clean):
            writer.file_writer.add_summary(summary)
        for key, value in clean.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def _start_wandb(self, config: dict[str, Any]) -> Any:
        try:
            import wandb
        except ImportError:
            raise ConfigError("report_to: [wandb] needs the wandb package: pip install wandb "
                              "(or set report_to: [])") from None
        # One W&B run per run directory, found again on resume; events synced from tb/.
        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", self.path.name)[:48] + "-" + stable_hash(
            str(self.path.resolve()), 8)
        return wandb.init(project=os.environ.get("WANDB_PROJECT", "selfedit-gym"),
                          name=self.path.name, id=run_id, resume="allow", dir=str(self.path),
                          config=config, sync_tensorboard=True)

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._tracker is not None:
            self._tracker.finish()
            self._tracker = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
