"""One experiment layer: a config base every runner extends, and one loader for all commands.

TRL's pattern (``GRPOConfig`` and ``SFTConfig`` extend one ``TrainingArguments``): the fields
every run shares live in :class:`ExperimentConfig`; :class:`~selfedit.training.config
.RunConfig`, ReST-EM, GRPO, continual and benchmark configs extend it, each declaring only its
own fields with :func:`param` (a default and a help text, which ``selfedit keys`` and the
commands' ``--help`` print).

:func:`load_experiment` is the one way a command reads its configuration: a YAML file
(optional), then ``key=value`` overrides (dotted keys, values parsed as YAML), then the
dataclass, whose ``__post_init__`` validates. Every mistake is one line that names the key
and says what to fix, and it comes before any run directory exists or any weights load:
unknown keys (with the closest valid one), wrong types, unsafe names, a negative seed, NUL
bytes, an empty file, a file over 1 MiB, and YAML aliases that would expand a small file into
a huge document (issue 13, item 5).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from selfedit.agents.registry import check_name
from selfedit.envs.config import ConfigError, EnvConfig, check_keys, check_types, param
from selfedit.training.env_kinds import SQUAD_ENV_ID, EnvKind, check_supported, env_kind

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "MAX_SEED",
    "TRACKERS",
    "ExperimentConfig",
    "apply_overrides",
    "load_experiment",
    "param",
    "parse_yaml",
    "read_yaml",
]

T = TypeVar("T")

MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; a larger file is a mistake or an attack
MAX_CONFIG_NODES = 100_000  # YAML nodes after aliases are expanded ("billion laughs" guard)
MAX_SEED = 2**31 - 1
TRACKERS = ("wandb",)  # optional trackers besides TensorBoard; imported only when asked for


@dataclass
class ExperimentConfig:
    """The fields every run shares; subclasses add their own (and may change a default).

    ``where`` prefixes the keys in error messages (``run.seeds must be int``). ``env_ids``
    lists the envs a command runs on (``env_id``); a subclass that runs on more names them.
    """

    where: ClassVar[str] = "run"
    env_ids: ClassVar[tuple[str, ...]] = (SQUAD_ENV_ID,)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Runs before @dataclass reads the fields: an override without help inherits it.
        super().__init_subclass__(**kwargs)
        inherited: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(getattr(base, "__dataclass_fields__", {}))
        for name, value in vars(cls).items():
            if (isinstance(value, dataclasses.Field) and not value.metadata.get("help")
                    and name in inherited):
                value.metadata = types.MappingProxyType(dict(inherited[name].metadata))

    name: str = param("run", "experiment name; the run writes to "
                      "<output_dir>/<name>__<seed>__<time> (letters, digits, '.', '_', '-')")
    seed: int = param(0, "base seed of the run (0 to 2**31-1); every seed the run uses is "
                      "derived from it")
    output_dir: str = param("results", "parent directory of run directories")
    tensorboard: bool = param(True, "write TensorBoard events (with HParams) under <run>/tb")
    report_to: list[str] = param(factory=list, help="trackers besides TensorBoard: [wandb] "
                                 "mirrors the TensorBoard events to Weights & Biases (needs "
                                 "`pip install wandb`; WANDB_MODE=offline logs without "
                                 "network); [] = none")
    progress: bool = param(True, "show progress: a bar or one line per evaluation")
    env_id: str = param(SQUAD_ENV_ID, "the env the run steps: 'selfedit/SQuAD-v0' (templates "
                        "scored on SQuAD passages) or 'selfedit/ARC-v0' (training recipes "
                        "scored on ARC tasks); the env section takes that env's keys")
    # The config class of env_id's kind (EnvConfig for SQuAD, ArcConfig for ARC), built
    # from its mapping in __post_init__; None = that class's defaults.
    env: Any = param(None, "env settings")

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # TRL's spelling: report_to: wandb
            self.report_to = [] if self.report_to in ("none", "") else [self.report_to]
        check_supported(env_kind(self.env_id).env_id, self.env_ids, command=self.where)
        self._build_sections()
        check_types(self, where=self.where)
        check_name(self.name, key="name")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED}, got "
                              f"{self.seed}")
        if not self.output_dir.strip() or "\x00" in self.output_dir:
            raise ConfigError(f"output_dir must be a directory path, got {self.output_dir!r}")
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker(s) {unknown}; use [] or "
                              f"{list(TRACKERS)} (TensorBoard is the `tensorboard` key)")
        if self.report_to and not self.tensorboard:
            raise ConfigError("report_to: [wandb] mirrors the TensorBoard events: set "
                              "tensorboard: true, or report_to: []")

    @property
    def env_kind(self) -> EnvKind:
        """What the runners ask of the env ``env_id`` names (:mod:`~selfedit.training
        .env_kinds`)."""
        return env_kind(self.env_id)

    # -- nested sections (env, executor, sft, ...) --------------------------------------
    @classmethod
    def _sections(cls) -> dict[str, type]:
        """Fields whose type is a config dataclass, built from a mapping when given one
        (``env``: the config class of ``env_id``, chosen per instance)."""
        hints = typing.get_type_hints(cls)
        out = {f.name: hints[f.name] for f in fields(cls)
               if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}
        out["env"] = EnvConfig
        return out

    def _build_sections(self) -> None:
        for name, kind in self._sections().items():
            value = getattr(self, name)
            if name == "env":
                kind = self.env_kind.config_class()
                if value is not None and not isinstance(value, (dict, kind)):
                    raise ConfigError(f"env holds a {type(value).__name__}, but env_id="
                                      f"{self.env_id!r} takes the keys of {kind.__name__}: "
                                      "give the env's keys as a mapping, or set env_id to "
                                      "match")
            if value is None:
                value = {}
            if isinstance(value, dict):
                build = getattr(kind, "from_dict", None)
                if build is None:
                    check_keys(kind, value, where=name)
                    value = kind(**value)
                else:
                    value = build(value)
            setattr(self, name, value)

    @classmethod
    def from_dict(cls: type[T], raw: dict[str, Any]) -> T:
        """Build from a mapping (YAML's): unknown keys name the closest valid one."""
        check_keys(cls, raw, where=cls.where)  # type: ignore[attr-defined]
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain values as in a YAML file: own keys first, then sections (``env`` last)."""
        flat = dataclasses.asdict(self)
        sections = self._sections()
        order = [f.name for f in fields(self) if f.name not in sections]
        order += [n for n in sections if n != "env"] + (["env"] if "env" in sections else [])
        return {name: flat[name] for name in order}

    def hparams(self) -> dict[str, bool | int | float | str]:
        """The config flattened for TensorBoard's HParams (``env.model``, lists as JSON)."""
        out: dict[str, bool | int | float | str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif value is None:
                out[prefix] = "null"
            elif isinstance(value, (bool, int, float, str)):
                out[prefix] = value
            else:
                out[prefix] = json.dumps(value, ensure_ascii=False)[:500]

        walk("", self.to_dict())
        return out


# -- reading YAML safely ---------------------------------------------------------------------
class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses documents whose aliases expand past a node budget.

    An alias points at an earlier node; a few levels of aliases to lists of aliases describe
    an exponentially large document in a few hundred bytes. The expanded size is counted on
    the composed node graph (shared nodes counted once per use, memoised: linear time) before
    any Python object is built.
    """

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            size = _expanded_size(node)
            if size > MAX_CONFIG_NODES:
                raise ConfigError(f"its aliases (*name) expand to {size:,} values (at most "
                                  f"{MAX_CONFIG_NODES:,}); write the values out instead")
        return node


def _expanded_size(root: yaml.Node) -> int:
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError("an alias refers to a value that contains it (a recursive "
                              "alias); write the values out instead")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely and within bounds (ConfigError, RecursionError or YAMLError)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    return f"{where}: {problem}"


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """A config file's mapping ({} for no file); every problem is a one-line ConfigError."""
    if path is None:
        return {}
    path = Path(path)
    try:
        exists, is_dir = path.is_file(), path.is_dir()
    except (ValueError, OSError) as err:  # a NUL byte or an unusable path
        raise ConfigError(f"config file {str(path)!r} cannot be used: {err}") from None
    if not exists:
        what = "is a directory" if is_dir else "does not exist"
        raise ConfigError(f"config file {path} {what} (see configs/ for examples)")
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {len(data):,} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES:,} (is it the right file?)")
    try:
        raw = parse_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML{_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    if raw is None:
        raise ConfigError(f"config file {path} is empty: give the keys of the run (see "
                          "configs/ for examples, `selfedit keys` for every key)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got "
                          f"{type(raw).__name__}")
    return raw


# -- key=value overrides -----------------------------------------------------------------------
_SLICE = re.compile(r"""\s*['"]?-?\d*\s*:\s*-?\d*(:-?\d*)?['"]?\s*""")


def _override_value(key: str, text: str) -> Any:
    if _SLICE.fullmatch(text):
        return text.strip().strip("'\"")  # YAML 1.1 reads 20:30 as the int 1230
    if not text.strip():
        return None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}=...: the value is not valid YAML"
                          f"{_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"override {key}=...: the value is nested too deeply") from None
    except ConfigError as err:
        raise ConfigError(f"override {key}=...: {err}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys; values parsed as YAML) to a copy of ``raw``.

    >>> apply_overrides({"env": {"passages": "0:8"}}, ["env.passages=20:30", "seeds=3"])
    {'env': {'passages': '20:30'}, 'seeds': 3}
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. env.passages=0:4)")
        dotted, text = item.split("=", 1)
        keys = [k.strip() for k in dotted.split(".")]
        if not all(keys):
            raise ConfigError(f"override {item!r}: the key is empty or has an empty part "
                              "(e.g. env.passages=0:4)")
        node = out
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted}: {key} is not a section")
            node = child
        node[keys[-1]] = _override_value(dotted, text)
    return out


# Keys older versions wrote into every config file, with the value that meant "off": a run
# directory from then (results/ holds several) still loads. Any other value is left for the
# config's own check, which says what replaced the key.
RETIRED = {("env", "archive_show"): 0}


def _drop_retired(raw: dict[str, Any]) -> None:
    for (*sections, key), neutral in RETIRED.items():
        node: Any = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == neutral:
            del node[key]


def _check_text(value: Any, path: str = "") -> None:
    """No NUL byte anywhere: it would end a file path or a C string half-way."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ConfigError(f"{path or 'a value'} contains a NUL byte (\\x00); remove it")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, path)
            _check_text(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{path}[{i}]")


def load_experiment(cls: type[T], path: str | Path | None = None,
                    overrides: list[str] | None = None,
                    values: dict[str, Any] | None = None) -> T:
    """Read a YAML config (or start from defaults), apply overrides, build and validate.

    ``values`` (top-level keys, already typed: command-line flags) win over the file and the
    overrides. ``cls`` is any config dataclass: an :class:`ExperimentConfig` (its
    ``from_dict``; a ``config_class(raw)`` classmethod may pick a subclass, as ``algorithm``
    picks ReST-EM or GRPO) or a plain one such as the inner-loop benchmark's.
    """
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.update(values or {})
    _check_text(raw)
    _drop_retired(raw)
    pick = getattr(cls, "config_class", None)
    if pick is not None:
        cls = pick(raw)
    build = getattr(cls, "from_dict", None)
    if build is not None:
        return build(raw)
    # A plain dataclass: keys and types are checked on an unvalidated copy first, so that
    # its own __post_init__ only ever sees values of the declared types.
    where = getattr(cls, "where", cls.__name__)
    check_keys(cls, raw, where=where)
    shadow = object.__new__(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        shadow.__dict__[f.name] = raw.get(f.name, default)
    check_types(shadow, where=where)
    return cls(**raw)
