"""Shared fixtures: tiny randomly initialised models built here, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "squad" / "squad_v1.1_dev_seal.json"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models run fastest on one thread, and do not fight other work for the cores.

    (Measured while another process used the 135M model: a tiny env step took ~6 s with
    two threads and 0.1-0.3 s with one.) The slow tests raise it again for the 135M model.
    """
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smol_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The SmolLM2 tokenizer (with its chat template), read from the embedded GGUF."""
    from transformers import AutoTokenizer

    from selfedit.envs.backend import embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_backend(smol_tokenizer):
    """A fresh 2-layer Llama with the SmolLM2 tokenizer, wrapped in the HF backend."""
    from selfedit.envs.backend import HFBackend

    return HFBackend(build_tiny_model(smol_tokenizer), tokenizer=smol_tokenizer, device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(smol_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved to disk, for code paths that load by path (CLI, runners)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(smol_tokenizer).save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out
