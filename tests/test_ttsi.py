"""TT-SI / TT-D self-edit agents on tiny models: uncertainty, selection, variants, the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_tiny_model

from selfedit.agents.registry import make_agent
from selfedit.agents.ttsi import (
    QAItem,
    TemplateSelfEditAgent,
    TTSIAgent,
    answer_loglik,
    parse_passages,
    parse_qa_pairs,
)
from selfedit.envs import prompts
from selfedit.envs.backend import HFBackend
from selfedit.envs.config import ConfigError
from selfedit.envs.library import human_baseline
from selfedit.envs.selfedit_env import SelfEditEnv
from selfedit.training.config import RunConfig
from selfedit.training.run import run

FAST = {"completion_max_tokens": 16, "answer_max_tokens": 6, "baseline_cache": None,
        "action_mode": "self_edit"}
SMALL = {"candidates": 6, "samples": 1, "keep": 2, "variants": 2, "max_new_tokens": 16,
         "hyperparameters": {"lora_rank": 4, "num_epochs": 1}}


class Recording:
    """A real backend that also records the prompts each generate call received."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, texts: list[str], **kwargs: Any) -> list[str]:
        self.calls.append(list(texts))
        return self.backend.generate(texts, **kwargs)


@pytest.fixture()
def env(tiny_backend) -> SelfEditEnv:
    return SelfEditEnv(backend=tiny_backend, **FAST)


def test_parsers_read_observations_and_replies() -> None:
    shown = prompts.self_edit_prompt_many([("Kell", "The Kell bridge is red."),
                                           ("Ada", "Ada was born in 1901.")])
    assert parse_passages(shown) == [("Kell", "The Kell bridge is red."),
                                     ("Ada", "Ada was born in 1901.")]
    reply = 'Sure: [{"question": "Who built the bridge?", "Answer": "Ada Voss"}]'
    assert [(p.question, p.answer) for p in parse_qa_pairs(reply)] == [
        ("Who built the bridge?", "Ada Voss")]
    # Too short a question, an answer repeating the question, a duplicate: all dropped.
    text = ("Question: Why? Answer: yes\nQuestion: What is red? Answer: What is red?\n"
            "1. Q: What colour is it? A: red, like a " + "very " * 30 + "long answer\n"
            "Question: What colour is it? Answer: red")
    pairs = parse_qa_pairs(text)
    assert [p.question for p in pairs] == ["What colour is it?"]
    assert len(pairs[0].answer.split()) == 16


def test_loglik_batched_equals_one_at_a_time(tiny_backend) -> None:
    questions = ["Who built the Kell bridge?", "When?", "What colour is the bridge of Kell?"]
    answers = ["Ada Voss", "In the spring of 1901", "red"]
    batched = answer_loglik(tiny_backend, questions, answers, batch_size=3)
    for q, a, value in zip(questions, answers, batched, strict=True):
        # Direct: the full text through the model, log-probs of the answer's tokens.
        tok = tiny_backend.tokenizer
        p_ids = tok(tiny_backend.format_prompt(prompts.ANSWER_PROMPT.format(question=q)),
                    add_special_tokens=False)["input_ids"]
        a_ids = tok(a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny_backend.model(torch.tensor([p_ids + a_ids])).logits[0]
        logp = torch.log_softmax(logits[len(p_ids) - 1:-1], dim=-1)
        direct = float(logp.gather(1, torch.tensor(a_ids)[:, None]).mean())
        assert value == pytest.approx(direct, abs=1e-4)
    assert all(v < 0 for v in batched)


def test_loglik_rises_for_an_answer_the_model_was_trained_on(tiny_backend) -> None:
    """The uncertainty is the self model's: after training on a pair, it is surer of it."""
    q, a = "Who built the Kell bridge?", "Ada Voss of Marrow"
    before = answer_loglik(tiny_backend, [q], [a])[0]
    tok = tiny_backend.tokenizer
    ids = (tok(tiny_backend.format_prompt(prompts.ANSWER_PROMPT.format(question=q)),
               add_special_tokens=False)["input_ids"] + tok(a, add_special_tokens=False)
           ["input_ids"])
    model = tiny_backend.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert answer_loglik(tiny_backend, [q], [a])[0] > before + 0.5


def test_ttsi_keeps_the_least_sure_items_and_trains_on_them(env) -> None:
    checksum = env.base_checksum()
    agent = TTSIAgent(env.backend, **SMALL)
    obs, info = env.reset(seed=0)
    action = agent.act(obs, info)
    assert env.base_checksum() == checksum  # measuring uncertainty changed nothing
    edit = json.loads(action)
    (trace,) = agent.counts["trace"]
    scores = [c["uncertainty"] for c in trace["candidates"]]
    assert len(scores) == 6 and all(s > 0 for s in scores)  # -loglik of a random model
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:2]
    assert sorted(trace["kept"]) == sorted(top)
    kept = [trace["candidates"][i] for i in trace["kept"]]
    # The passage, then each kept pair followed by its variants (restated when the random
    # model writes none that parse).
    passage = env.corpus[int(obs["passage_ids"][0])]
    assert edit["sequences"][0] == f"{passage.title}\n{passage.context}"
    for item in kept:
        assert QAItem(item["question"], item["answer"], "x").text() in edit["sequences"]
    assert len(edit["sequences"]) == 1 + sum(1 + n for n in trace["variants"]) == \
        trace["sequences"]
    assert edit["hyperparameters"]["lora_rank"] == 4
    _, reward, _, _, step = env.step(action)
    assert step["error"] is None and 0.0 <= reward <= 1.0
    assert step["results"][0]["update"]["sequences"] == len(edit["sequences"])
    assert env.base_checksum() == checksum
    assert agent.counts["proposals"] == 1 and agent.counts["kept"] == 2
    assert agent.counts["sequences"] == len(edit["sequences"])


def test_ttd_variants_come_from_the_teacher(env, smol_tokenizer) -> None:
    student = Recording(env.backend)
    teacher = Recording(HFBackend(build_tiny_model(smol_tokenizer, seed=1),
                                  tokenizer=smol_tokenizer, device="cpu"))
    agent = TTSIAgent(student, writer=teacher, name="ttd", **SMALL)
    obs, info = env.reset(seed=3)
    agent.act(obs, info)
    # The student wrote the candidates (one call); the teacher every variant prompt.
    assert len(student.calls) == 1 and "question and answer pairs" in student.calls[0][0]
    (variant_prompts,) = teacher.calls
    assert len(variant_prompts) == 2 and all("same fact" in p for p in variant_prompts)


def test_disagreement_uncertainty(env) -> None:
    agent = TTSIAgent(env.backend, uncertainty="disagreement", disagreement_samples=3, **SMALL)
    obs, info = env.reset(seed=1)
    agent.act(obs, info)
    scores = [c["uncertainty"] for c in agent.counts["trace"][0]["candidates"]]
    assert all(0.0 <= s <= 2 / 3 + 1e-9 for s in scores)  # 1 - share of the modal answer


def test_state_round_trip_gives_the_same_next_action(env) -> None:
    first = TTSIAgent(env.backend, seed=5, **SMALL)
    obs, info = env.reset(seed=2)
    first.act(obs, info)
    saved = json.loads(json.dumps(first.state_dict()))
    second = TTSIAgent(env.backend, seed=99, **SMALL)
    second.load_state_dict(saved)
    assert first.act(obs, info) == second.act(obs, info)


def test_template_mode_and_bad_settings_say_what_to_fix(tiny_backend, env) -> None:
    template_env = SelfEditEnv(backend=tiny_backend, **{**FAST, "action_mode": "template"})
    obs, info = template_env.reset(seed=0)
    with pytest.raises(ValueError, match="action_mode: self_edit"):
        TTSIAgent(tiny_backend, **SMALL).act(obs, info)
    with pytest.raises(ValueError, match="keep"):
        TTSIAgent(tiny_backend, candidates=2, keep=3)
    with pytest.raises(ConfigError, match="teacher"):
        make_agent({"type": "ttd", "name": "t"}, env)
    with pytest.raises(ConfigError, match="unknown key"):
        make_agent({"type": "ttsi", "keeep": 2}, env)
    with pytest.raises(ConfigError, match="uncertainty"):
        make_agent({"type": "ttsi", "uncertainty": "vibes"}, env)


def test_template_self_edit_agent_is_the_template_mode_step(env) -> None:
    agent = make_agent({"type": "self_edit_template", "baseline": "entigraph", "seed": 1}, env)
    assert isinstance(agent, TemplateSelfEditAgent) and agent.name == "entigraph"
    obs, info = env.reset(seed=4)
    edit = json.loads(agent.act(obs, info))
    passage = env.corpus[int(obs["passage_ids"][0])]
    assert edit["sequences"][0] == f"{passage.title}\n{passage.context}"
    assert edit["hyperparameters"] == human_baseline("entigraph").hyperparameters.to_dict()
    _, reward, _, _, step = env.step(json.dumps(edit))
    assert step["error"] is None and 0.0 <= reward <= 1.0


def test_runner_compares_ttsi_ttd_and_a_baseline(tiny_model_dir: Path, tmp_path) -> None:
    cfg = RunConfig.from_dict({
        "name": "ttsi", "output_dir": str(tmp_path), "progress": False, "tensorboard": False,
        "agents": [{"type": "self_edit_template", "name": "passage", "baseline": "passage"},
                   {"type": "ttsi", "name": "ttsi", **SMALL},
                   {"type": "ttd", "name": "ttd", "teacher": str(tiny_model_dir), **SMALL}],
        "env": {**FAST, "model": str(tiny_model_dir), "dtype": "float32", "passages": "0:2"},
    })
    run_dir = run(cfg)
    records = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["agent"] for r in records] == ["passage"] * 2 + ["ttsi"] * 2 + ["ttd"] * 2
    assert all(r["error"] is None for r in records)
    by_agent = {r["agent"]: r for r in records}
    assert by_agent["passage"]["results"][0]["update"]["sequences"] == 1
    assert by_agent["ttsi"]["agent_counts"]["trace"][0]["kept"]
    # Paired: every agent saw the same passages with the same reset seeds.
    assert len({(r["episode"], r["reset_seed"], tuple(r["passage_ids"])) for r in records}) == 2
