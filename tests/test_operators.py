"""Full fine-tuning and singular-value operators (issue 16): they learn, they keep to their
budgets, the base is bit-identical after success, failure and budget cuts; the env routes
each template to the operator it names; the wrapper and the bandits' library choose it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from selfedit.envs.backend import HFBackend, weights_checksum
from selfedit.envs.config import ConfigError
from selfedit.envs.library import TemplateLibrary
from selfedit.envs.multilora import AdapterRequest
from selfedit.envs.operators import (
    FullFineTune,
    SingularValueBank,
    SingularValueUpdate,
    load_or_compute_svd,
    svd_cache_path,
)
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.envs.templates import (
    FullHyperparameters,
    Hyperparameters,
    SVDHyperparameters,
    Template,
    TemplateError,
)
from selfedit.envs.vector import SelfEditVectorEnv
from selfedit.envs.wrappers import DiscreteTemplateWrapper

TEXT = ["The Orm harp of Drovia has forty-one strings made of braided gut and silver wire."]
FAST = {"completion_max_tokens": 16, "answer_max_tokens": 6, "baseline_cache": None}
PROBE = torch.tensor([[1, 40, 41, 42, 43]])


def _logits(backend) -> torch.Tensor:
    with torch.no_grad():
        return backend.model(input_ids=PROBE).logits


def _full(**kw) -> tuple[FullFineTune, FullHyperparameters]:
    return FullFineTune(**kw), FullHyperparameters(learning_rate=1e-3, num_epochs=6)


def _svd(**kw) -> tuple[SingularValueUpdate, SVDHyperparameters]:
    return (SingularValueUpdate(cache_dir=False, **kw),
            SVDHyperparameters(learning_rate=0.1, num_epochs=6))


OPERATORS = {"full": _full, "svd": _svd}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch) -> None:
    """SVD caches of the env's operators go to a temporary directory, never to ~/.cache."""
    monkeypatch.setenv("SELFEDIT_CACHE", str(tmp_path / "cache"))


# -- integrity: the same checks the LoRA operator passes --------------------------------------
@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_weights_change_loss_falls_base_restored(tiny_backend, kind: str) -> None:
    op, hp = OPERATORS[kind]()
    base = weights_checksum(tiny_backend.model)
    before = _logits(tiny_backend)
    grads = [p.requires_grad for p in tiny_backend.model.parameters()]
    with op.adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        assert not torch.equal(_logits(tiny_backend), before)  # the model answers adapted
        if kind == "full":
            assert weights_checksum(tiny_backend.model) != base  # its own weights moved
            assert len(op.merged_weights()) > 0
        else:
            assert op.bank is not None
            assert all(float((z.detach() - 1).abs().sum()) > 0 for z in op.bank.parameters(0))
            assert weights_checksum(tiny_backend.model) == base  # hooks: never written
            assert all(not p.requires_grad for p in tiny_backend.model.parameters())
    assert stats.error is None and stats.optimizer_steps == 6
    assert stats.loss_last < stats.loss_first
    assert stats.train_tokens > 6 * 10
    assert not any(m._forward_hooks for m in tiny_backend.model.modules())
    assert [p.requires_grad for p in tiny_backend.model.parameters()] == grads
    assert torch.equal(_logits(tiny_backend), before)
    assert weights_checksum(tiny_backend.model) == base


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_non_finite_loss_fails_and_restores(tiny_backend, kind: str) -> None:
    model = tiny_backend.model
    with torch.no_grad():  # activations overflow in a norm that no operator's SVD reads
        model.model.layers[0].input_layernorm.weight.fill_(float("inf"))
    before = weights_checksum(model)
    op, hp = OPERATORS[kind]()
    with op.adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        pass
    assert stats.error is not None and "loss became" in stats.error
    assert weights_checksum(model) == before


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_budgets_cut_training_and_restore(tiny_backend, kind: str) -> None:
    base = weights_checksum(tiny_backend.model)
    op, _ = OPERATORS[kind](max_train_tokens=100)
    hp = type(OPERATORS[kind]()[1])(num_epochs=50)
    with op.adapted(tiny_backend, TEXT, hp, seed=0) as stats:
        pass
    assert stats.error is None and stats.optimizer_steps < 50
    assert any("max_train_tokens=100" in note for note in stats.notes)
    assert weights_checksum(tiny_backend.model) == base
    op, _ = OPERATORS[kind](micro_batch_size=1)
    seqs = [f"Fact {i}: the keeper owned {i} brass lamps." for i in range(6)]
    with op.adapted(tiny_backend, seqs, hp, seed=0, max_seconds=0.0) as stats:
        pass
    assert stats.optimizer_steps == 1  # one micro-batch always runs, then the time budget
    assert any("time budget" in note for note in stats.notes)
    assert weights_checksum(tiny_backend.model) == base


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_base_restored_when_the_block_raises(tiny_backend, kind: str) -> None:
    before = weights_checksum(tiny_backend.model)
    op, hp = OPERATORS[kind]()
    with pytest.raises(RuntimeError, match="answering failed"):
        with op.adapted(tiny_backend, TEXT, hp, seed=0):
            raise RuntimeError("answering failed")
    assert not any(m._forward_hooks for m in tiny_backend.model.modules())
    assert weights_checksum(tiny_backend.model) == before


@pytest.mark.parametrize("kind", sorted(OPERATORS))
def test_no_training_leaves_the_model_alone(tiny_backend, kind: str) -> None:
    before = _logits(tiny_backend)
    op, hp = OPERATORS[kind]()
    zero = type(hp)(num_epochs=0)
    with op.adapted(tiny_backend, TEXT, zero, seed=0) as stats:
        assert torch.equal(_logits(tiny_backend), before)
    assert stats.optimizer_steps == 0


# -- full fine-tuning ---------------------------------------------------------------------------
def test_full_selects_last_layers_and_patterns(tiny_backend) -> None:
    model = tiny_backend.model
    last = {n for n, _ in FullFineTune().select(model, last_layers=1)}
    assert last and all(".layers.1." in n or n == "model.norm.weight" for n in last)
    assert "model.norm.weight" in last and "model.embed_tokens.weight" not in last
    mlp = {n for n, _ in FullFineTune(parameters=["mlp"]).select(model)}
    assert mlp and all(".mlp." in n for n in mlp)
    with pytest.raises(ValueError, match="matches none"):
        FullFineTune(parameters=["no_such_module"]).select(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    op = FullFineTune()
    with op.adapted(tiny_backend, TEXT, FullHyperparameters(learning_rate=1e-3, num_epochs=2,
                                                             last_layers=1), seed=0) as st:
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= last
    assert st.to_dict()["trained_parameters"] == sum(p.numel() for n, p in
                                                     model.named_parameters() if n in last)


def test_full_refuses_a_model_too_large_for_the_machine(tiny_backend) -> None:
    base = weights_checksum(tiny_backend.model)
    op = FullFineTune(memory_fraction=1e-12)  # as if the machine had no memory to spare
    with op.adapted(tiny_backend, TEXT, FullHyperparameters(), seed=0) as stats:
        pass
    assert stats.error is not None and "refused" in stats.error
    assert "last_layers" in stats.error and "lora or svd" in stats.error
    assert stats.optimizer_steps == 0 and weights_checksum(tiny_backend.model) == base
    with pytest.raises(ConfigError, match="full fine-tuning refused"):
        SelfEditEnv(backend=tiny_backend, operators=["lora", "full"],
                    update={"full": op}, **FAST)


def test_full_trains_a_bf16_model_through_float32_master_weights(smol_tokenizer) -> None:
    from conftest import build_tiny_model

    model = build_tiny_model(smol_tokenizer).to(torch.bfloat16)
    backend = HFBackend(model, tokenizer=smol_tokenizer, device="cpu")
    base = weights_checksum(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # lr 1e-4 x 12 steps moves a master weight by ~1e-3: about a bf16 step of a 0.1 weight;
    # plain bf16 AdamW would round most single updates away.
    hp = FullHyperparameters(learning_rate=1e-4, num_epochs=12)
    with FullFineTune().adapted(backend, TEXT, hp, seed=0) as stats:
        changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters())
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert stats.error is None and stats.loss_last < stats.loss_first
    assert changed > 0.5 * sum(p.numel() for p in model.parameters())
    assert weights_checksum(model) == base


# -- singular values ----------------------------------------------------------------------------
def test_svd_bank_computes_u_diag_sz_vh(tiny_backend) -> None:
    model = tiny_backend.model
    op = SingularValueUpdate(cache_dir=False)
    factors = op.prepare(tiny_backend)
    modules = op.targets(model)
    bank = SingularValueBank(model, modules, factors, components=[0, 3])
    try:
        name, module = modules[0]
        x = torch.randn(2, 5, module.in_features)
        with torch.no_grad():
            for z in bank.parameters(0) + bank.parameters(1):
                z.uniform_(0.5, 1.5)
            bank.default = 0
            u, s, vh = factors.u[name], factors.s[name], factors.vh[name]
            dense = u @ torch.diag(s * bank.z[0][0]) @ vh  # W' = U diag(s z) V^T
            assert torch.allclose(module(x), x @ dense.T, atol=1e-4)
            bank.default = 1  # only the 3 leading singular values are scaled
            z = torch.ones_like(s)
            z[:3] = bank.z[1][0]
            assert torch.allclose(module(x), x @ (u @ torch.diag(s * z) @ vh).T, atol=1e-4)
            bank.default = None
            with bank.rows([None, 0]):  # row routing: row 0 is the base, row 1 adapter 0
                out = module(x)
            assert torch.equal(out[0], torch.nn.functional.linear(x[0], module.weight))
            with bank.rows([None, None]):
                assert torch.equal(module(x), torch.nn.functional.linear(x, module.weight))
            assert torch.allclose(out[1], x[1] @ dense.T, atol=1e-4)
            for z in bank.parameters(0):
                z.fill_(1.0)
            bank.default = 0  # z = 1 is exactly the base
            assert torch.equal(module(x), torch.nn.functional.linear(x, module.weight))
    finally:
        bank.remove()
    assert [len(z) for z in bank.parameters(1)] == [min(3, len(z)) for z in bank.parameters(0)]


def test_svd_many_adapters_train_together_as_alone(tiny_backend) -> None:
    op = SingularValueUpdate(cache_dir=False)
    hps = [SVDHyperparameters(learning_rate=0.05, num_epochs=3),
           SVDHyperparameters(learning_rate=0.1, num_epochs=2, svd_components=8)]
    seqs = [TEXT, ["The ferry crosses the Lune river four times an hour in summer."]]
    alone = []
    for s, hp in zip(seqs, hps, strict=True):
        with op.adapted_many(tiny_backend, [AdapterRequest(s, hp, 7)]) as st:
            alone.append(st[0])
    before = weights_checksum(tiny_backend.model)
    requests = [AdapterRequest(s, hp, 7) for s, hp in zip(seqs, hps, strict=True)]
    with op.adapted_many(tiny_backend, requests) as together:
        texts = ["Question: what strings?"] * 3
        routed = tiny_backend.generate(texts, max_new_tokens=4, adapters=[0, 1, None])
        assert routed[2] == tiny_backend.generate(texts[:1], max_new_tokens=4)[0]
    for a, t in zip(alone, together, strict=True):
        assert t.optimizer_steps == a.optimizer_steps
        assert t.losses == pytest.approx(a.losses, rel=1e-4, abs=1e-5)
    assert weights_checksum(tiny_backend.model) == before


def test_svd_cache_is_written_once_reused_and_never_trusted_when_corrupt(tiny_backend,
                                                                          tmp_path) -> None:
    cache = tmp_path / "svd-cache"
    first = SingularValueUpdate(cache_dir=cache).prepare(tiny_backend)
    assert first.source == "computed"
    path = svd_cache_path(cache, tiny_backend.fingerprint, first.modules)
    assert path.is_file()
    written = path.stat().st_mtime_ns
    op = SingularValueUpdate(cache_dir=cache)  # a new operator (a new process, say)
    second = op.prepare(tiny_backend)
    assert second.source == "disk" and path.stat().st_mtime_ns == written
    assert op.prepare(tiny_backend) is second  # in memory after the first load
    name = first.modules[0]
    assert torch.equal(first.u[name], second.u[name]) and torch.equal(first.s[name],
                                                                       second.s[name])
    # Flip bytes in the middle of the data: the digest no longer matches.
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="not usable"):
        third = SingularValueUpdate(cache_dir=cache).prepare(tiny_backend)
    assert third.source == "computed"
    assert SingularValueUpdate(cache_dir=cache).prepare(tiny_backend).source == "disk"
    path.write_bytes(b"not a safetensors file")  # unreadable: recomputed as well
    with pytest.warns(UserWarning, match="not usable"):
        modules = SingularValueUpdate().targets(tiny_backend.model)
        again = load_or_compute_svd(modules, tiny_backend.fingerprint, cache)
    assert again.source == "computed"
    assert torch.equal(again.s[name], first.s[name])


def test_svd_merged_weights_match_the_hooked_model(tiny_backend) -> None:
    op, hp = _svd()
    with op.adapted(tiny_backend, TEXT, hp, seed=0):
        adapted = _logits(tiny_backend)
        merged = op.merged_weights()
    saved = {}
    with torch.no_grad():
        for name, weight in merged.items():
            module = tiny_backend.model.get_submodule(name)
            saved[name] = module.weight.clone()
            module.weight.copy_(weight)
        assert torch.allclose(_logits(tiny_backend), adapted, atol=1e-4)
        for name, weight in saved.items():
            tiny_backend.model.get_submodule(name).weight.copy_(weight)


# -- the operator in the action: routing in the env ---------------------------------------------
def _template(operator: str | None = None, **hp) -> str:
    out = {"data_creation_instruction": "", "include_passage": True,
           "hyperparameters": {"num_epochs": 3, **hp}}
    if operator:
        out["update_operator"] = operator
    return json.dumps(out)


def test_env_routes_each_template_to_its_operator(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, operators=["lora", "svd", "full"],
                      verify_base_every=1, **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    for operator, hp in ((None, {}), ("lora", {"lora_rank": 4}),
                         ("svd", {"learning_rate": 0.05, "svd_components": 16}),
                         ("full", {"learning_rate": 1e-4, "last_layers": 1})):
        _, reward, _, _, info = env.step(_template(operator, **hp))
        ran = operator or "lora"  # the default operator
        assert info["error"] is None, info["error"]
        assert info["template"]["update_operator"] == ran
        update = info["results"][0]["update"]
        assert update["operator"] == ran
        assert update["optimizer_steps"] == 3 and update["loss_last"] < update["loss_first"]
        assert reward == info["accuracy"]
    assert isinstance(env.operator("svd"), SingularValueUpdate)
    json.dumps(info)  # plain JSON


def test_env_refuses_operators_it_does_not_allow(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, **FAST)  # default: LoRA only
    env.reset(seed=0, options={"passage_ids": [0]})
    before = env.base_checksum()
    _, reward, _, _, info = env.step(_template("svd"))
    assert reward == env.config.invalid_reward
    assert "not allowed" in info["error"] and "env.operators" in info["error"]
    _, _, _, _, info = env.step(_template("sgd"))
    assert "update_operator must be one of lora, full, svd" in info["error"]
    _, _, _, _, info = env.step(_template("svd", learning_rate=5.0))
    assert info["error"] is not None
    assert env.base_checksum() == before
    with pytest.raises(ConfigError, match="default_operator"):
        SelfEditEnv(backend=tiny_backend, operators=["lora"], default_operator="svd", **FAST)
    with pytest.raises(ConfigError, match="engine 'vllm' serves LoRA adapters only"):
        SelfEditEnv(backend=tiny_backend, engine="vllm", operators=["svd"],
                    default_operator="svd", **FAST)


def test_default_operator_serves_templates_that_name_none(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, operators=["svd", "lora"], default_operator="svd",
                      **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    _, _, _, _, info = env.step(_template(learning_rate=0.05))
    assert info["error"] is None and info["template"]["update_operator"] == "svd"
    assert info["results"][0]["update"]["operator"] == "svd"
    assert env.update is env.operator("svd")


def test_self_edit_action_names_its_operator(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, action_mode="self_edit",
                      operators=["lora", "full"], **FAST)
    env.reset(seed=0, options={"passage_ids": [0]})
    action = json.dumps({"sequences": TEXT, "update_operator": "full",
                         "hyperparameters": {"learning_rate": 1e-4, "num_epochs": 2}})
    _, _, _, _, info = env.step(action)
    assert info["error"] is None and info["results"][0]["update"]["operator"] == "full"
    assert info["template"]["hyperparameters"]["learning_rate"] == 1e-4
    _, _, _, _, info = env.step(TEXT)  # a plain list: the default operator
    assert info["results"][0]["update"]["operator"] == "lora"


def test_a_vector_step_mixes_lora_and_other_operators(tiny_backend) -> None:
    lora = _template("lora", lora_rank=4)
    mixed = [lora, _template("svd", learning_rate=0.05), _template("full", learning_rate=1e-4),
             _template(num_epochs=0)]
    venv = SelfEditVectorEnv(4, backend=tiny_backend, operators=["lora", "svd", "full"],
                             verify_base_every=1, **FAST)
    venv.reset(seed=5)
    before = venv.env.base_checksum()
    _, rewards, _, _, info = venv.step(mixed)
    final = info["final_info"]
    assert list(final["error"]) == [None] * 4
    ran = [r[0]["update"]["operator"] for r in final["results"]]
    assert ran == ["lora", "svd", "full", "lora"]
    steps = [r[0]["update"]["optimizer_steps"] for r in final["results"]]
    assert steps[:3] == [3, 3, 3] and steps[3] == 0
    assert venv.env.base_checksum() == before
    # The LoRA slot is what it is without the others (its joint path is unchanged).
    alone = SelfEditVectorEnv(1, backend=tiny_backend, **FAST)
    alone.reset(seed=5)
    _, reward, _, _, info_alone = alone.step([lora])
    assert rewards[0] == pytest.approx(reward[0])
    assert (list(final["results"][0][0]["answers"])
            == list(info_alone["final_info"]["results"][0][0]["answers"]))


def test_meta_prompt_explains_only_the_allowed_operators(tiny_backend) -> None:
    lora_only = SelfEditEnv(backend=tiny_backend, **FAST).reset(seed=0)[0]["prompt"]
    assert "update_operator" not in lora_only
    prompt = SelfEditEnv(backend=tiny_backend, operators=["lora", "svd"],
                         **FAST).reset(seed=0)[0]["prompt"]
    assert '"svd"' in prompt and "svd_components" in prompt and '"full"' not in prompt
    assert "last_layers" not in prompt
    env = SelfEditEnv(backend=tiny_backend, operators=["full"], default_operator="full",
                      passages_per_step=2, pool_passages=True, **FAST)
    with_archive = env.meta_prompt("Templates evaluated so far: none yet.")
    assert '"update_operator": "full"' in with_archive and "last_layers" in with_archive
    assert "2 passages arrive together" in with_archive
    assert with_archive.endswith("Templates evaluated so far: none yet.")


# -- the operator as an axis of the library, the wrapper and the bandits ------------------------
def test_library_operator_axis_round_trips_every_arm() -> None:
    lib = TemplateLibrary.from_baselines(["passage", "rewrite"], ranks=[8, 16],
                                         learning_rates=[1e-3, 3e-3], epochs=[2],
                                         operators=["lora", "full", "svd"])
    assert lib.axes[-1] == "update_operator" and lib.dims == (2, 2, 2, 1, 3)
    seen = set()
    for arm in lib.arms():
        template = lib.template(arm)
        kind = lib.operators[arm[-1]]
        assert template.update_operator == kind
        assert isinstance(template.hyperparameters, {"lora": Hyperparameters,
                                                      "full": FullHyperparameters,
                                                      "svd": SVDHyperparameters}[kind])
        assert lib.arm_of(template) == arm and lib.arm_of(template.to_json()) == arm
        seen.add(template.to_json())
    assert len(seen) == lib.n_arms  # every arm is a different template
    assert lib.to_dict()["operators"] == ["lora", "full", "svd"]
    assert "operators" not in TemplateLibrary().to_dict()  # off by default: states unchanged
    assert TemplateLibrary().arm_of(Template("x", SVDHyperparameters())) is None
    with pytest.raises(ConfigError, match="svd_components must have 2 values"):
        TemplateLibrary(lora_ranks=[8, 16], operators=["svd"], svd_components=[0])
    with pytest.raises(ConfigError, match="full_learning_rates: learning_rate must be between"):
        TemplateLibrary(operators=["full"], full_learning_rates=[1e-2] * 4)


def test_wrapper_chooses_the_operator(tiny_backend) -> None:
    env = SelfEditEnv(backend=tiny_backend, operators=["lora", "svd"], **FAST)
    lib = TemplateLibrary.from_baselines(["passage"], ranks=[4], learning_rates=[3e-3],
                                         epochs=[2], operators=["lora", "svd"])
    wrapped = DiscreteTemplateWrapper(env, lib)
    assert list(wrapped.action_space.nvec) == [1, 1, 1, 1, 2]
    wrapped.reset(seed=0)
    for op_index, kind in enumerate(["lora", "svd"]):
        _, _, _, _, info = wrapped.step(np.array([0, 0, 0, 0, op_index]))
        assert info["error"] is None and info["arm"][-1] == op_index
        assert info["results"][0]["update"]["operator"] == kind
    with pytest.raises(ValueError, match="not allowed by the env"):
        DiscreteTemplateWrapper(SelfEditEnv(backend=tiny_backend, **FAST), lib)
    default = DiscreteTemplateWrapper(SelfEditEnv(backend=tiny_backend, **FAST))
    assert len(default.action_space.nvec) == 4  # no operator axis unless asked


def test_bandit_spec_with_operators_proposes_every_operator() -> None:
    from selfedit.agents.registry import make_agent

    agent = make_agent({"type": "ucb1", "name": "ops", "instructions": ["passage"],
                        "ranks": [8], "learning_rates": [1e-3], "epochs": [2],
                        "operators": ["lora", "svd"], "svd_learning_rates": [0.02]})
    proposed = set()
    for _ in range(4):
        template = agent.act({}, {})
        proposed.add(template.update_operator)
        agent.observe(template, 0.5, {})
    assert proposed == {"lora", "svd"}
    assert agent.library.svd_learning_rates == [0.02]


def test_templates_validate_each_operators_ranges() -> None:
    t, report = Template.from_dict({"instruction": "x", "update_operator": "full",
                                    "hyperparameters": {"lora_rank": 8, "learning_rate": 1e-5}})
    assert isinstance(t.hyperparameters, FullHyperparameters)
    assert report["ignored_keys"] == ["lora_rank"]
    with pytest.raises(TemplateError, match="learning_rate must be between 1e-07 and 0.001"):
        Template.from_dict({"instruction": "x", "update_operator": "full",
                            "hyperparameters": {"learning_rate": 1e-2}})
    t, report = Template.from_dict({"instruction": "x", "update_operator": "svd",
                                    "hyperparameters": {"learning_rate": 2.0}}, policy="clamp")
    assert t.hyperparameters.learning_rate == 0.5 and report["clamped"]
    with pytest.raises(TemplateError, match="takes SVDHyperparameters"):
        Template("x", Hyperparameters(), update_operator="svd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Template("x", update_operator="SVD").update_operator == "svd"
