"""Model loading: GGUF conversion yields a plain, trainable checkpoint; paths fail clearly."""

from __future__ import annotations

import pytest

from selfedit.envs.backend import HFBackend, resolve_model_path


def test_local_directory_and_generation(tiny_model_dir) -> None:
    backend = HFBackend(str(tiny_model_dir), device="cpu")
    out = backend.generate(["Hello", "A longer prompt here"], max_new_tokens=4)
    assert len(out) == 2
    sampled = [backend.generate(["Hello"], max_new_tokens=6, temperature=1.0, seed=s)[0]
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded sampling is reproducible


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model.gguf", "does not exist"),
        ("./no/such/dir", "does not exist"),
    ],
)
def test_missing_model_paths(model: str, message: str) -> None:
    with pytest.raises(FileNotFoundError, match=message):
        resolve_model_path(model)


def test_directory_without_config(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_embedded_gguf_converts_to_a_trainable_checkpoint() -> None:
    """The GGUF trap (DESIGN.md): the converted model has no quantizer and trains."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    path = resolve_model_path("embedded")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    # transformers' Trainer refuses quantized models at construction; this one is accepted.
    Trainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to=[]))
