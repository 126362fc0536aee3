"""The self-edit environment: templates, corpus, update operator, grading, backends."""

ENV_ID = "selfedit/SQuAD-v0"


def register_envs() -> None:
    """Register ``selfedit/SQuAD-v0`` with Gymnasium (idempotent; ``import selfedit`` calls it)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="selfedit.envs.selfedit_env:SelfEditEnv")
