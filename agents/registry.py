"""Build agents from config entries, so which agent runs is one config key.

An entry is a baseline name (``implications``) or a mapping with ``type`` and its
arguments, e.g. ``{type: fixed, name: short, template: {...}}`` or
``{type: fixed, baseline: passage, hyperparameters: {num_epochs: 5}}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from selfedit.agents.base import Agent
from selfedit.agents.fixed import HUMAN_BASELINES, FixedTemplateAgent, human_baseline
from selfedit.envs.config import ConfigError
from selfedit.envs.templates import Template, TemplateError

__all__ = ["AGENT_KEYS", "AGENT_TYPES", "MAX_NAME_CHARS", "check_agent_spec", "check_agents",
           "check_name", "make_agent", "register_agent"]

# Names become parts of file paths (run directories, tb/<agent>/, state/<agent>.json), so
# they are plain names: no separator, no '..', no NUL, nothing hidden (issue 13, item 4).
MAX_NAME_CHARS = 100
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_name(value: Any, *, key: str) -> str:
    """Return ``value`` if it is safe as a file or directory name; else a one-line error.

    >>> check_name("impl-5ep", key="name")
    'impl-5ep'
    >>> try:
    ...     check_name("../up", key="name")
    ... except ConfigError as err:
    ...     print(str(err)[:44])
    name must be a plain name for file paths: le
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a name (text), got {type(value).__name__} "
                          f"{_shown(value)}")
    if len(value) > MAX_NAME_CHARS or not _NAME.fullmatch(value):
        raise ConfigError(
            f"{key} must be a plain name for file paths: letters, digits, '.', '_' and '-', "
            f"not starting with '.' or '-', at most {MAX_NAME_CHARS} characters; got "
            f"{_shown(value)}"
        )
    return value


def _fixed(spec: dict[str, Any], env: Any = None) -> Agent:
    try:
        if "template" in spec:
            template, _ = Template.from_dict(spec["template"])
        elif "update_operator" in spec:  # a baseline's data, another operator (issue 16)
            base = human_baseline(spec.get("baseline", ""))
            template, _ = Template.from_dict({
                "data_creation_instruction": base.data_creation_instruction,
                "include_passage": base.include_passage, "name": base.name,
                "hyperparameters": spec.get("hyperparameters", {}),
                "update_operator": spec["update_operator"]})
        else:
            template = human_baseline(spec.get("baseline", ""), **spec.get("hyperparameters", {}))
    except (TemplateError, KeyError) as err:
        raise ConfigError(f"agent {spec.get('name', '?')}: {err}") from None
    return FixedTemplateAgent(template, name=spec.get("name"))


# A factory takes the config entry and the env the agent will act in (for agents that need
# its model, e.g. an LLM template writer in self mode, or its corpus size).
AgentFactory = Callable[[dict[str, Any], Any], Agent]
AGENT_TYPES: dict[str, AgentFactory] = {"fixed": _fixed}
AGENT_KEYS: dict[str, set[str]] = {"fixed": {"template", "baseline", "hyperparameters",
                                             "update_operator"}}


def register_agent(type_name: str, factory: AgentFactory, keys: set[str]) -> None:
    """Make a new agent type available to configs (``{type: type_name, ...}``).

    ``keys`` are the config keys the type accepts besides ``type`` and ``name``; they are
    checked by :func:`check_agent_spec` before any model loads.
    """
    AGENT_TYPES[type_name] = factory
    AGENT_KEYS[type_name] = set(keys)


def check_agent_spec(spec: str | dict[str, Any], *, key: str = "agent") -> str:
    """Validate a config entry without building anything; return the agent's name.

    ``key`` names the entry in error messages (``agents[2]``).
    """
    if isinstance(spec, str):
        if spec not in HUMAN_BASELINES:
            raise ConfigError(
                f"{key}: unknown agent {_shown(spec)}: use a baseline name "
                f"({', '.join(HUMAN_BASELINES)}) or a mapping with 'type'"
            )
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: an agent entry must be a baseline name or a mapping with "
                          f"'type', got {type(spec).__name__} {_shown(spec)}")
    odd = [k for k in spec if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{key}: agent keys must be text, got {_shown(odd[0])}; write e.g. "
                          "{type: fixed, baseline: passage}")
    kind = spec.get("type", "fixed")
    if not isinstance(kind, str) or kind not in AGENT_TYPES:
        raise ConfigError(f"{key}: unknown agent type {_shown(kind)}; known: "
                          f"{', '.join(AGENT_TYPES)}")
    allowed = AGENT_KEYS[kind] | {"type", "name"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {sorted(unknown)} for a {kind} agent; use {sorted(allowed)}"
        )
    if kind == "fixed":
        _check_fixed_shape(spec, key)
        if "name" not in spec:
            name = spec.get("baseline") or spec.get("template", {}).get("name") or "fixed"
            return check_name(name, key=f"{key}.name (taken from the template; give the "
                                        "agent a 'name')")
    if kind == "arc_fixed" and "name" not in spec and isinstance(spec.get("baseline"), str):
        return check_name(spec["baseline"], key=f"{key}.name (taken from the baseline)")
    return check_name(spec.get("name", kind), key=f"{key}.name")


def _check_fixed_shape(spec: dict[str, Any], key: str) -> None:
    """The value types of a fixed agent's keys, so a list where a name belongs is one line."""
    baseline = spec.get("baseline")
    if baseline is not None and (not isinstance(baseline, str)
                                 or baseline not in HUMAN_BASELINES):
        raise ConfigError(f"{key}.baseline must be one baseline name "
                          f"({', '.join(HUMAN_BASELINES)}), got {_shown(baseline)}")
    for name in ("template", "hyperparameters"):
        if name in spec and not isinstance(spec[name], dict):
            raise ConfigError(f"{key}.{name} must be a mapping of keys to values, got "
                              f"{type(spec[name]).__name__} {_shown(spec[name])}")


def check_agents(specs: Sequence[Any], *, key: str = "agents") -> list[str]:
    """Validate every entry of an agent list; return the names, which must be unique."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ConfigError(f"{key} must be a non-empty list of agents, e.g. [passage, "
                          f"no_training], got {_shown(specs)}")
    names = [check_agent_spec(spec, key=f"{key}[{i}]") for i, spec in enumerate(specs)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"agent names must be unique, got {twice} more than once; give "
                          "each entry its own 'name'")
    return names


def make_agent(spec: str | dict[str, Any], env: Any = None) -> Agent:
    """Build an agent from a config entry (``env``: the env it will act in, if it needs it).

    >>> make_agent("passage").name
    'passage'
    >>> make_agent({"type": "fixed", "baseline": "implications", "name": "impl-5ep",
    ...             "hyperparameters": {"num_epochs": 5}}).template.hyperparameters.num_epochs
    5
    """
    check_agent_spec(spec)
    if isinstance(spec, str):
        return FixedTemplateAgent(spec)
    return AGENT_TYPES[spec.get("type", "fixed")](spec, env)


# --- LLM template writers ---
_LLM_KEYS = {"model", "explore_ratio", "exploit_temperature", "explore_temperature",
             "max_retries", "max_new_tokens", "prefix_json", "seed"}


def _llm_agent(cls_name: str) -> AgentFactory:
    def factory(spec: dict[str, Any], env: Any) -> Agent:
        from selfedit.agents import llm

        kwargs = {k: v for k, v in spec.items() if k not in ("type", "model")}
        if spec.get("model"):  # separate mode: the policy is another model
            from selfedit.envs.backend import HFBackend

            backend = HFBackend(spec["model"])
        elif env is not None:  # self mode: the env's own model writes the templates
            backend = env.backend
        else:
            raise ConfigError(f"a {spec['type']} agent needs an env or a 'model' key")
        try:
            return getattr(llm, cls_name)(backend, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"agent {spec.get('name', spec['type'])}: {err}") from None

    return factory


register_agent("metaprompt", _llm_agent("MetaPromptAgent"), _LLM_KEYS)
register_agent("archive", _llm_agent("ArchiveAgent"), _LLM_KEYS | {"show", "seed_baselines"})
register_agent("novelty", _llm_agent("NoveltyArchiveAgent"),
               _LLM_KEYS | {"show", "seed_baselines", "novelty_weight", "k", "candidates"})


# --- bandit agents ---
from selfedit.agents import bandits as _bandits  # noqa: E402 - kept inside this block

register_agent("ucb1", _bandits.ucb1_from_spec, keys=_bandits.UCB1_KEYS)
register_agent("thompson", _bandits.thompson_from_spec, keys=_bandits.THOMPSON_KEYS)
register_agent("evolution", _bandits.evolution_from_spec, keys=_bandits.EVOLUTION_KEYS)
# --- end bandit agents ---

# --- ARC agents (selfedit/ARC-v0, issue 15) ---
from selfedit.agents.arc import register_arc_agents  # noqa: E402 - after the registry exists

register_arc_agents()

# --- test-time self-improvement agents (self-edit mode, issue 17) ---
from selfedit.agents import ttsi as _ttsi  # noqa: E402 - after the registry exists


def _checked(factory: Callable[[dict[str, Any], Any], Agent]) -> AgentFactory:
    """A factory whose argument errors become one-line config errors naming the agent."""
    def build(spec: dict[str, Any], env: Any) -> Agent:
        try:
            return factory(spec, env)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"agent {spec.get('name', spec.get('type'))}: {err}") from None

    return build


register_agent("ttsi", _checked(_ttsi.ttsi_from_spec), _ttsi.TTSI_KEYS)
register_agent("ttd", _checked(_ttsi.ttd_from_spec), _ttsi.TTSI_KEYS | {"teacher", "teacher_dtype"})
register_agent("self_edit_template", _checked(_ttsi.template_self_edit_from_spec),
               {"template", "baseline", "hyperparameters", "seed"})
# --- end test-time self-improvement agents ---
