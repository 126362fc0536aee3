"""Exploration-collapse metrics for a population of templates (an archive, a step's batch).

The template-search paper (arXiv 2601.14532) reports that its archive *homogenised*: mean
pairwise hyperparameter similarity rose from 0.93 to 1.00 over 5 iterations, and the
instructions became paraphrases of one idea. These plain functions measure both, so runs
of different agents can be compared on how much they keep exploring:

- :func:`instruction_similarity`: mean pairwise cosine similarity of instruction embeddings;
- :func:`hyperparameter_similarity`: mean pairwise ``1 - mean |normalised difference|``;
- :func:`distinct_configs`: how many different hyperparameter settings there are;
- :func:`collapse_metrics`: all of them under namespaced keys, ready to log.

The hyperparameter similarity follows the definition in the collapse-metrics issue (per
parameter normalised by :func:`~selfedit.agents.embedding.hyperparameter_vector`); the paper
does not spell out its own, so compare its 0.93 -> 1.00 with ours as a trend, not a number.
Instruction similarity depends on the text embedder: with MiniLM paraphrases score high;
with the hashing fallback only shared words count, so it reads *lower* collapse than
MiniLM does on paraphrased archives. Log ``embedder.name`` beside the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from selfedit.agents.embedding import (
    HP_VECTOR_KEYS,
    TemplateEmbedder,
    TemplateLike,
    TextEmbedder,
    default_text_embedder,
    hyperparameter_values,
    hyperparameter_vector,
    template_parts,
)
from selfedit.envs.templates import Hyperparameters

__all__ = [
    "EmbedderLike",
    "collapse_metrics",
    "distinct_configs",
    "hyperparameter_similarity",
    "instruction_similarity",
]

EmbedderLike = TextEmbedder | TemplateEmbedder | str | Callable[[list[str]], Any] | None
HyperparametersLike = Mapping[str, Any] | Hyperparameters


def _text_embedder(embedder: EmbedderLike) -> TextEmbedder:
    if embedder is None:
        return default_text_embedder()
    if isinstance(embedder, TemplateEmbedder):
        return embedder.text_embedder
    if isinstance(embedder, TextEmbedder):
        return embedder
    # A backend name or callable; pass a TextEmbedder object to keep a loaded model.
    return TextEmbedder(embedder)


def _mean_pairwise(similarity: np.ndarray) -> float:
    """Mean of the strictly upper triangle of an (n, n) similarity matrix; 1.0 when n == 1."""
    n = similarity.shape[0]
    if n == 1:
        return 1.0
    upper = similarity[np.triu_indices(n, k=1)]  # (n * (n - 1) / 2,)
    return float(np.clip(upper.mean(), -1.0, 1.0))


def _check_nonempty(items: Sequence[Any], what: str) -> None:
    if isinstance(items, (str, Mapping, Hyperparameters)):
        raise TypeError(f"pass a list of {what}, not a single one")
    if len(items) == 0:
        raise ValueError(f"no {what} given: similarity of an empty population is undefined")


def instruction_similarity(instructions: Sequence[str], embedder: EmbedderLike = None) -> float:
    """Mean pairwise cosine similarity of the instructions' embeddings.

    1.0 when all instructions are identical. A single instruction also gives 1.0: a
    population of one has no diversity at all, the same as ``n`` copies of it, and a
    collapsed archive should read as collapsed (0.0 or NaN would read as diverse, or break
    the mean of a logged curve).

    Args:
        instructions: data-creation instructions, at least one.
        embedder: a :class:`~selfedit.agents.embedding.TextEmbedder` (or a
            ``TemplateEmbedder``, whose text embedder is used, or a backend name or callable);
            ``None`` = the shared default (MiniLM when installed).

    >>> from selfedit.agents.embedding import TextEmbedder
    >>> hashing = TextEmbedder("hashing")
    >>> instruction_similarity(["List the facts.", "List the facts."], hashing)
    1.0
    >>> instruction_similarity(["List the facts.", "Rewrite the passage."], hashing) < 0.5
    True
    """
    _check_nonempty(instructions, "instructions")
    vectors = _text_embedder(embedder).embed(list(instructions)).astype(np.float64)  # (n, d)
    # Rows are unit length up to float32 rounding; renormalise so identical texts give 1.0.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    return _mean_pairwise(vectors @ vectors.T)


def hyperparameter_similarity(hps: Sequence[HyperparametersLike]) -> float:
    """Mean over pairs of ``1 - mean over parameters of |normalised difference|``.

    Each setting is normalised to ``[0, 1]^6`` by
    :func:`~selfedit.agents.embedding.hyperparameter_vector` (log scales for rank, alpha
    and learning rate; out-of-range values clipped; missing keys = SEAL's defaults). 1.0 for
    identical settings, 0.0 only for two settings at opposite corners of every range. One
    setting gives 1.0, as in :func:`instruction_similarity`.

    >>> low = {"lora_rank": 4, "lora_alpha": 1, "lora_dropout": 0.0, "learning_rate": 1e-5,
    ...        "num_epochs": 1, "gradient_accumulation_steps": 1}
    >>> hyperparameter_similarity([low, low])
    1.0
    >>> hyperparameter_similarity([low, {**low, "num_epochs": 20}])  # 1 - 1/6
    0.8333333333333334
    """
    _check_nonempty(hps, "hyperparameter settings")
    vectors = np.stack([hyperparameter_vector(hp) for hp in hps])  # (n, 6)
    # (n, n): mean absolute difference over the 6 parameters, for every pair.
    distance = np.abs(vectors[:, None, :] - vectors[None, :, :]).mean(-1)
    return _mean_pairwise(1.0 - distance)


def _config_key(hp: HyperparametersLike) -> tuple[float, ...]:
    values = hyperparameter_values(hp)
    # 6 significant digits: 1e-3 and 0.0010000000001 (float noise from JSON or arithmetic)
    # are one setting; 64 and 64.0 are too. Raw values, not clipped: rank 128 and rank 256
    # both clip to the top of the similarity scale but are different configurations.
    return tuple(float(f"{values[key]:.6g}") for key in HP_VECTOR_KEYS)


def distinct_configs(hps: Sequence[HyperparametersLike]) -> int:
    """Number of distinct hyperparameter settings (missing keys count as SEAL's defaults).

    >>> distinct_configs([{"learning_rate": 1e-3}, {"learning_rate": "0.001"}, {}])
    1
    >>> distinct_configs([{"lora_rank": 8}, {"lora_rank": 16}, {"lora_rank": 8.0}])
    2
    """
    if isinstance(hps, (Mapping, Hyperparameters)):
        raise TypeError("pass a list of hyperparameter settings, not a single one")
    return len({_config_key(hp) for hp in hps})


def collapse_metrics(
    templates: Sequence[TemplateLike], embedder: EmbedderLike = None
) -> dict[str, float]:
    """All collapse metrics of a population of templates, under ``collapse/`` keys.

    Templates are dicts as agents write them (``data_creation_instruction`` or
    ``instruction``, ``hyperparameters``) or :class:`~selfedit.envs.templates.Template`
    objects; they are not validated, so out-of-range settings are measured (clipped) rather
    than rejected. ``embedder`` is as in :func:`instruction_similarity`.

    >>> from selfedit.agents.embedding import TextEmbedder
    >>> same = {"data_creation_instruction": "List the implications.",
    ...         "hyperparameters": {"lora_rank": 32, "learning_rate": 1e-3}}
    >>> metrics = collapse_metrics([same, same, same], TextEmbedder("hashing"))
    >>> {key: round(value, 3) for key, value in metrics.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'collapse/instruction_similarity': 1.0, 'collapse/hyperparameter_similarity': 1.0,
     'collapse/distinct_configs': 1.0, 'collapse/templates': 3.0}
    """
    _check_nonempty(templates, "templates")
    parts = [template_parts(t) for t in templates]
    instructions = [instruction for instruction, _ in parts]
    hps = [hp for _, hp in parts]
    return {
        "collapse/instruction_similarity": instruction_similarity(instructions, embedder),
        "collapse/hyperparameter_similarity": hyperparameter_similarity(hps),
        "collapse/distinct_configs": float(distinct_configs(hps)),
        "collapse/templates": float(len(templates)),
    }
