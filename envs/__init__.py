"""The self-edit environment: templates, corpus, update operator, grading, backends."""

ENV_ID = "selfedit/SQuAD-v0"


def register_envs() -> None:
    """Register ``selfedit/SQuAD-v0`` with Gymnasium (idempotent; ``import selfedit`` calls it)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        # vector_entry_point: make_vec holds one model and evaluates K templates per step
        # (issue 11) instead of copying the env K times.
        gymnasium.register(id=ENV_ID, entry_point="selfedit.envs.selfedit_env:SelfEditEnv",
                           vector_entry_point="selfedit.envs.vector:SelfEditVectorEnv")
