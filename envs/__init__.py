"""The self-edit environment: templates, corpus, update operator, grading, backends."""

ENV_ID = "selfedit/SQuAD-v0"
# SEAL's multi-passage (continued-pretraining) setting (issue 16): the self-edits of several
# passages train one update that answers all their questions; 4 embedded passages by default.
CPT_ENV_ID = "selfedit/SQuAD-CPT-v0"
CPT_DEFAULTS = {"pool_passages": True, "passages_per_step": 4}


def register_envs() -> None:
    """Register ``selfedit/SQuAD-v0`` and ``selfedit/SQuAD-CPT-v0`` with Gymnasium
    (idempotent; ``import selfedit`` calls it)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        # vector_entry_point: make_vec holds one model and evaluates K templates per step
        # (issue 11) instead of copying the env K times.
        gymnasium.register(id=ENV_ID, entry_point="selfedit.envs.selfedit_env:SelfEditEnv",
                           vector_entry_point="selfedit.envs.vector:SelfEditVectorEnv")
    if CPT_ENV_ID not in gymnasium.registry:
        # The same env with pooling on: kwargs given to make() override these defaults.
        gymnasium.register(id=CPT_ENV_ID, entry_point="selfedit.envs.selfedit_env:SelfEditEnv",
                           vector_entry_point="selfedit.envs.vector:SelfEditVectorEnv",
                           kwargs=dict(CPT_DEFAULTS))
