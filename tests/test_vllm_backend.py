"""The vLLM engine (issue 6): everything that runs without vLLM and without a GPU.

The vLLM calls themselves need a CUDA machine; here we check what decides whether they are
right: the config key, the early refusal, the adapter hand-over from the update operator,
the adapter files vLLM loads, and the token ids and sampling settings it would be sent.
"""

from __future__ import annotations

import copy
import doctest
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import selfedit.envs.vllm_backend as vllm_backend
from selfedit.envs.backend import HFBackend, make_backend, weights_checksum
from selfedit.envs.config import ConfigError, EnvConfig
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.templates import HP_RANGES, Hyperparameters
from selfedit.envs.update import LoRAUpdate, PeftLoRAUpdate
from selfedit.envs.vllm_backend import (
    VLLMBackend,
    adapter_rank,
    request_prompts,
    sampling_options,
    save_adapter,
    save_bank_adapter,
    vllm_max_lora_rank,
)

REPO = Path(__file__).resolve().parents[1]
TEXT = ["The Orm harp of Drovia has forty-one strings made of braided gut and silver wire."]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
no_vllm = pytest.mark.skipif(HAS_VLLM, reason="checks the refusal when vllm is missing")


# -- the config key ------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    ({"engine": "vlm"}, "engine must be one of hf, vllm, got 'vlm'"),
    ({"engine": "HF"}, "engine must be one of hf, vllm, got 'HF'"),
    ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization must be a fraction"),
    ({"vllm_gpu_memory_utilization": float("nan")}, "vllm_gpu_memory_utilization must be"),
    ({"vllm_max_model_len": 0}, "vllm_max_model_len must be a number of tokens >= 1"),
    ({"engine": 1}, "env.engine must be str"),
])
def test_bad_engine_settings_name_the_key_and_the_allowed_values(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        EnvConfig.from_dict(overrides)


def test_engine_defaults_to_transformers_and_accepts_vllm_without_loading_it() -> None:
    assert EnvConfig().engine == "hf"
    # Choosing vllm is a valid config anywhere; only building the backend needs vllm + GPU.
    cfg = EnvConfig.from_dict({"engine": "vllm", "vllm_max_model_len": 4096})
    assert cfg.engine == "vllm" and cfg.vllm_max_model_len == 4096


def test_make_backend_builds_transformers_for_engine_hf(tiny_model_dir) -> None:
    backend = make_backend(EnvConfig(model=str(tiny_model_dir), device="cpu"))
    assert type(backend) is HFBackend
    assert backend.generate(["Say hi."], max_new_tokens=3)  # it loaded and generates


# -- refused early, with what to do --------------------------------------------------------
@no_vllm
def test_env_with_engine_vllm_fails_before_any_weights_load(tmp_path) -> None:
    # The model path does not exist: had the env tried to load weights first, the error
    # would name the model; it names the missing package and the install command.
    with pytest.raises(ConfigError, match=r'pip install "selfedit-gym\[vllm\]"') as err:
        SelfEditEnv(model=str(tmp_path / "no-such-model"), engine="vllm", baseline_cache=None)
    assert "env.engine 'vllm' needs the vllm package" in str(err.value)
    assert "\n" not in str(err.value)


@no_vllm
def test_run_with_engine_vllm_fails_before_the_run_directory(tmp_path) -> None:
    from selfedit.training.config import load_config
    from selfedit.training.run import run

    cfg = load_config(REPO / "configs" / "baselines_cpu.yaml",
                      [f"output_dir={tmp_path}", "env.engine=vllm"])
    with pytest.raises(ConfigError, match="needs the vllm package"):
        run(cfg)
    assert not list(tmp_path.iterdir())


@no_vllm
def test_vllm_backend_refuses_before_loading() -> None:
    with pytest.raises(ConfigError, match="needs the vllm package"):
        VLLMBackend("embedded", device="cpu")


def test_vllm_backend_needs_a_model_path_not_an_object(tiny_backend) -> None:
    with pytest.raises(TypeError, match="by name or path"):
        VLLMBackend(tiny_backend.model)


@pytest.mark.parametrize("config", ["restem_cpu.yaml", "grpo_cpu.yaml"])
def test_self_mode_policy_training_refuses_vllm(config) -> None:
    from selfedit.training.restem import load_train_config

    with pytest.raises(ConfigError, match="mode: self changes the env's base weights") as err:
        load_train_config(REPO / "configs" / config, ["env.engine=vllm"])
    assert "set env.engine: hf, or mode: separate" in str(err.value)
    separate = load_train_config(REPO / "configs" / config, [
        "env.engine=vllm", "mode=separate", "policy_model=embedded"])
    assert separate.env.engine == "vllm"


def test_continual_mode_refuses_vllm() -> None:
    from selfedit.training.continual import load_continual_config

    with pytest.raises(ConfigError, match="continual mode .* set env.engine: hf"):
        load_continual_config(REPO / "configs" / "continual_cpu.yaml", ["env.engine=vllm"])


def test_benchmark_gpu_config_selects_vllm() -> None:
    from selfedit.training.benchmark import load_benchmark_config

    gpu = load_benchmark_config(REPO / "configs" / "benchmark_gpu.yaml")
    assert gpu.run.env.engine == "vllm" and 0 < gpu.run.env.vllm_gpu_memory_utilization < 1


# -- adapter hand-over from the update operator --------------------------------------------
class RecordingBackend(HFBackend):
    """A real transformers backend that takes the adapter the way VLLMBackend does."""

    def __init__(self, *args: Any, adapter_dir: Path, fail_ready: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter_dir = adapter_dir
        self.fail_ready = fail_ready
        self.events: list[str] = []
        self.probe = torch.tensor([[1, 17, 42, 99, 5]])  # (1, T)
        self.adapted_logits: torch.Tensor | None = None
        self.peft_model: Any = None

    def adapter_ready(self, peft_model: Any) -> None:
        self.events.append("ready")
        if self.fail_ready:
            raise ValueError("cannot serve this adapter")
        self.peft_model = peft_model
        save_adapter(peft_model, self.adapter_dir)
        with torch.no_grad():
            self.adapted_logits = peft_model.eval()(input_ids=self.probe).logits  # (1, T, V)

    def adapter_done(self) -> None:
        self.events.append("done")

    # LoRAUpdate's hooks: the bank's adapters, saved one directory each (VLLMBackend's way).
    def adapters_ready(self, bank: Any) -> None:
        self.events.append("ready")
        if self.fail_ready:
            raise ValueError("cannot serve this adapter")
        super().adapters_ready(bank)
        save_bank_adapter(bank, 0, self.adapter_dir)
        with torch.no_grad(), bank.rows([0]):
            self.adapted_logits = self.model(input_ids=self.probe).logits  # (1, T, V)

    def adapters_done(self) -> None:
        self.events.append("done")
        super().adapters_done()


@pytest.fixture()
def recording(smol_tokenizer, tmp_path) -> RecordingBackend:
    from conftest import build_tiny_model

    return RecordingBackend(build_tiny_model(smol_tokenizer), tokenizer=smol_tokenizer,
                            device="cpu", adapter_dir=tmp_path / "adapter")


@pytest.mark.parametrize("operator", [LoRAUpdate, PeftLoRAUpdate])
def test_update_hands_the_trained_adapter_over_and_takes_it_back(recording, operator) -> None:
    from peft import PeftModel

    hp = Hyperparameters(lora_rank=8, lora_alpha=16, learning_rate=1e-2, num_epochs=4)
    base = weights_checksum(recording.model)
    with operator().adapted(recording, TEXT, hp, seed=0) as stats:
        assert recording.events == ["ready"]  # before the block's body: answers see it
    assert recording.events == ["ready", "done"]
    assert stats.optimizer_steps == 4 and stats.error is None
    if operator is PeftLoRAUpdate:
        assert isinstance(recording.peft_model, PeftModel)
        assert adapter_rank(recording.peft_model) == 8
    assert json.loads((recording.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    assert weights_checksum(recording.model) == base

    # The saved adapter is what vLLM would load: PEFT reads it back onto the base model,
    # and it gives the logits of the adapted model in memory (which differ from the base).
    saved = recording.adapter_dir
    assert (saved / "adapter_model.safetensors").is_file()
    assert (saved / "adapter_config.json").is_file()
    assert not list(saved.glob("*.bin")) and not (saved / "model.safetensors").exists()
    fresh = PeftModel.from_pretrained(copy.deepcopy(recording.model), str(saved)).eval()
    with torch.no_grad():
        loaded = fresh(input_ids=recording.probe).logits  # (1, T, V)
        plain = recording.model(input_ids=recording.probe).logits  # (1, T, V)
    assert recording.adapted_logits is not None
    torch.testing.assert_close(loaded, recording.adapted_logits, rtol=0, atol=1e-5)
    assert (plain - recording.adapted_logits).abs().max() > 1e-3


def test_adapter_done_runs_when_the_block_raises(recording) -> None:
    base = weights_checksum(recording.model)
    with pytest.raises(RuntimeError, match="grader crashed"):
        with LoRAUpdate().adapted(recording, TEXT, Hyperparameters(lora_rank=4, num_epochs=1),
                                  seed=0):
            raise RuntimeError("grader crashed")
    assert recording.events == ["ready", "done"]
    assert weights_checksum(recording.model) == base
    assert not any(m._forward_hooks for m in recording.model.modules())


def test_adapter_done_runs_when_adapter_ready_fails(recording) -> None:
    recording.fail_ready = True
    base = weights_checksum(recording.model)
    with pytest.raises(ValueError, match="cannot serve"):
        with LoRAUpdate().adapted(recording, TEXT, Hyperparameters(lora_rank=4, num_epochs=1),
                                  seed=0):
            pytest.fail("the block body must not run when the adapter cannot be served")
    assert recording.events == ["ready", "done"]
    assert weights_checksum(recording.model) == base


def test_no_training_means_no_adapter_to_hand_over(recording) -> None:
    with LoRAUpdate().adapted(recording, TEXT, Hyperparameters(num_epochs=0), seed=0):
        pass
    assert recording.events == []


def test_env_step_hands_over_one_adapter_per_update(recording) -> None:
    env = SelfEditEnv(backend=recording, baseline_cache=None, passages="0:2",
                      completion_max_tokens=8, answer_max_tokens=4)
    env.reset(seed=0)
    template = json.dumps({"data_creation_instruction": "", "include_passage": True,
                           "hyperparameters": {"lora_rank": 4, "num_epochs": 1}})
    _, _, _, _, info = env.step(template)
    assert info["error"] is None
    assert recording.events == ["ready", "done"]


# -- what vLLM would be sent ---------------------------------------------------------------
def test_vllm_prompts_are_the_token_ids_transformers_generates_from(tiny_backend) -> None:
    tok = tiny_backend.tokenizer
    prompts = ["Name the harp of Drovia.", "List three facts about silver wire, one per line."]
    prefix = '{"'
    assert tiny_backend.chat and tiny_backend.format_prompt(prompts[0]) != prompts[0]
    texts = [tiny_backend.format_prompt(p) + prefix for p in prompts]
    for limit in (2048, 9):
        requests = request_prompts(tiny_backend, prompts, response_prefix=prefix,
                                   max_prompt_tokens=limit)
        # HFBackend.generate's batch, with its padding removed.
        tok.padding_side = "left"
        batch = tok(tiny_backend.prompt_texts(prompts, prefix), return_tensors="pt",
                    padding=True, truncation=True, max_length=limit,
                    add_special_tokens=not tiny_backend.chat)
        fed = [ids[mask.bool()].tolist()
               for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
        assert [r["prompt_token_ids"] for r in requests] == fed
        if limit == 2048:
            decoded = [tok.decode(r["prompt_token_ids"]) for r in requests]
            assert decoded == texts
        else:
            assert all(len(r["prompt_token_ids"]) == limit for r in requests)


def test_sampling_options_copy_what_transformers_applies(tiny_backend) -> None:
    from transformers import GenerationConfig

    qwen_like = GenerationConfig(top_k=20, top_p=0.8, repetition_penalty=1.05,
                                 eos_token_id=[151645, 151643])
    sampled = sampling_options(qwen_like, 3, max_new_tokens=16, temperature=0.7, top_p=1.0,
                               seed=11)
    assert [o["seed"] for o in sampled] == [11, 12, 13]  # distinct, reproducible
    assert {o["top_k"] for o in sampled} == {20}
    assert {o["top_p"] for o in sampled} == {1.0}  # the caller's, as HFBackend passes it
    assert {o["repetition_penalty"] for o in sampled} == {1.05}
    assert sampled[0]["stop_token_ids"] == [151645, 151643]
    assert sampled[0]["max_tokens"] == 16 and sampled[0]["temperature"] == 0.7

    greedy = sampling_options(qwen_like, 2, max_new_tokens=4, temperature=0.0, top_p=1.0,
                              seed=11)
    assert all(o["temperature"] == 0.0 and "seed" not in o for o in greedy)
    assert greedy[0]["repetition_penalty"] == 1.05  # transformers applies it greedily too

    unseeded = sampling_options(GenerationConfig(top_k=0), 2, max_new_tokens=4,
                                temperature=1.0, top_p=0.9, seed=None)
    assert [o["seed"] for o in unseeded] == [None, None] and unseeded[0]["top_k"] == -1

    real = sampling_options(tiny_backend.model.generation_config, 1, max_new_tokens=4,
                            temperature=1.0, top_p=1.0, seed=0)[0]
    assert tiny_backend.tokenizer.eos_token_id in real["stop_token_ids"]
    assert real["top_k"] == vllm_backend.HF_DEFAULT_TOP_K and real["repetition_penalty"] == 1.0


def test_max_lora_rank_serves_every_valid_template() -> None:
    highest = int(HP_RANGES["lora_rank"][1])
    served = vllm_max_lora_rank(highest)
    assert served >= highest and served in vllm_backend.VLLM_LORA_RANKS
    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 200)] == [8, 8, 16, 256]
    with pytest.raises(ConfigError, match="above the largest max_lora_rank"):
        vllm_max_lora_rank(513)


def test_module_doctests() -> None:
    result = doctest.testmod(vllm_backend)
    assert result.attempted >= 3 and result.failed == 0
