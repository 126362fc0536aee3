"""Where env steps run: in the runner's own env, or on Ray actors that each hold a model.

An executor evaluates a list of :class:`Job` s (an action, the reset seed and passages of
a planned step) and returns one :class:`StepOutcome` per job, in job order. The jobs of a
block are evaluated *together*, in one batched pass over one model
(:meth:`SelfEditEnv.evaluate`: one generate for every completion, the adapters trained in
one joint forward/backward per round, one generate for every answer; issue 11). The env is
deterministic for a reset seed (the step seed, the LoRA initialisation, dropout and the
sampling of completions all come from it, per job), so a job's outcome does not depend on
which process evaluates it or which jobs share its batch, up to floating-point rounding:
:class:`SerialExecutor` and :class:`RayExecutor` give the same rewards for the same jobs.
What the agent proposes is the runner's business (``executor.batch``), never the
executor's (issue 6).

    executor = make_executor(cfg.executor, cfg.env)
    with executor:
        outcomes = executor.evaluate(env, jobs)  # env: the runner's own

The runner keeps its own env even with Ray: observations come from it, and an LLM agent in
self mode writes templates with its model. :class:`RayExecutor` splits a block into one
batch per actor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from selfedit.agents.base import Action
from selfedit.envs.config import ConfigError
from selfedit.training.config import ExecutorConfig
from selfedit.training.env_kinds import env_kind, kind_of_config

__all__ = ["Executor", "Job", "RayExecutor", "SerialExecutor", "StepOutcome", "check_executor",
           "make_executor", "step_job"]

RAY_HINT = 'executor.type=ray needs Ray: pip install "selfedit-gym[ray]"'


@dataclass(frozen=True)
class Job:
    """One planned env step with its action: what an executor evaluates.

    ``options`` are the reset options that pick the step's items, as the env's kind writes
    them (:meth:`~selfedit.training.env_kinds.EnvKind.reset_options`: SQuAD
    ``{"passage_ids": [...]}``, ARC ``{"task_index": i}``); None lets the env draw them from
    its reset seed.
    """

    action: Action
    reset_seed: int
    options: dict[str, Any] | None = None

    def reset_kwargs(self) -> dict[str, Any]:
        return {"seed": self.reset_seed, "options": self.options}


class StepOutcome(NamedTuple):
    """What the env's ``step`` returned for a job: the reward and the info."""

    reward: float
    info: dict[str, Any]


class Executor(Protocol):
    def evaluate(self, env: Any, jobs: list[Job]) -> list[StepOutcome]:
        """Outcomes of ``jobs`` in job order; ``env`` is the runner's own env."""
        ...

    def close(self) -> None: ...


def step_job(env: Any, job: Job) -> StepOutcome:
    """Reset ``env`` to the job's seed and passages, then step it with the job's action."""
    env.reset(**job.reset_kwargs())
    _, reward, _, _, info = env.step(job.action)
    return StepOutcome(reward, info)


def step_jobs(env: Any, jobs: list[Job]) -> list[StepOutcome]:
    """What :func:`step_job` gives for each job, computed in one batched pass.

    Each job's passages and step seed come from a generator seeded with its reset seed,
    exactly as ``env.reset(seed=...)`` then ``env.step`` would draw them; the actions are
    then evaluated together (:meth:`SelfEditEnv.evaluate`). Envs without ``evaluate`` are
    stepped one job at a time.
    """
    if not hasattr(env, "evaluate"):
        return [step_job(env, job) for job in jobs]
    from gymnasium.utils import seeding

    from selfedit.envs.selfedit_env import SlotRequest

    start = time.perf_counter()
    requests = []
    for job in jobs:
        rng, _ = seeding.np_random(job.reset_seed)
        options = job.reset_kwargs()["options"]
        idx = env.draw_passages(rng, options)
        requests.append(SlotRequest(job.action, tuple(idx), int(rng.integers(2**31 - 1)),
                                    start))
    try:
        outcomes = env.evaluate(requests)
    finally:
        env._after_step()  # the base-weights check, as after a step
    return [StepOutcome(reward, info) for reward, info in outcomes]


class SerialExecutor:
    """Evaluates a block of jobs in the runner's own env, in one batched pass."""

    def evaluate(self, env: Any, jobs: list[Job]) -> list[StepOutcome]:
        return step_jobs(env, jobs) if jobs else []

    def close(self) -> None:
        return None

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Ray -----------------------------------------------------------------------------------
class EnvWorker:
    """The body of a Ray actor: one env (so one model) built from a plain config mapping and
    the id of the env it configures.

    A failure to build the env is kept and reported by :meth:`ready` as (type, message), so
    the driver shows the env's own message (a missing model file, a bad corpus) instead of
    a Ray traceback.
    """

    def __init__(self, env_config: dict[str, Any], threads: int, env_id: str) -> None:
        import torch

        # Results must not depend on the process: the same thread count as asked for (and
        # Ray sets OMP_NUM_THREADS from the actor's CPUs, which torch may not follow).
        torch.set_num_threads(threads)
        self.env: Any = None
        self.error: tuple[str, str] | None = None
        try:
            kind = env_kind(env_id)
            self.env = kind.build(kind.config_class().from_dict(env_config))
        except Exception as err:  # noqa: BLE001 - reported to the driver by ready()
            self.error = (type(err).__name__, str(err))

    def ready(self) -> tuple[str, str] | None:
        return self.error

    def step(self, job: Job) -> StepOutcome:
        return step_job(self.env, job)

    def step_batch(self, jobs: list[Job]) -> list[StepOutcome]:
        return step_jobs(self.env, jobs)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_HINT) from None
    return ray


def portable_env_config(env_config: Any) -> dict[str, Any]:
    """The env config (any registered env's) as a plain mapping with local paths made
    absolute.

    A worker may start in another directory (or on another node of a cluster, where the
    absolute path must exist too).
    """
    return kind_of_config(env_config).portable_config(env_config)


def _worker_error(kind: str, message: str) -> Exception:
    """The error a worker's env raised, as the same kind of error here where we can."""
    if kind == "ConfigError":
        return ConfigError(message)
    if kind == "FileNotFoundError":
        return FileNotFoundError(message)
    return RuntimeError(f"a Ray worker could not build its env: {kind}: {message}")


class RayExecutor:
    """Evaluates jobs on ``workers`` Ray actors, each building its own env from the config.

    A block of jobs is split into one contiguous batch per actor (each evaluated in one
    batched pass on its actor); outcomes come back in job order.

    Args:
        env_config: the env every actor builds (the runner's ``cfg.env``: any registered
            env's config; its class says which env).
        workers: number of actors, each holding its own model.
        address: a Ray cluster to join; None starts a local Ray runtime (shut down by
            :meth:`close`). A Ray runtime already started in this process is used as it is.
        threads_per_worker: torch threads and Ray CPUs per actor.
        gpus_per_worker: Ray GPUs per actor (fractions share a GPU).
    """

    def __init__(
        self,
        env_config: Any,
        *,
        workers: int = 1,
        address: str | None = None,
        threads_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
    ) -> None:
        self._ray = ray = _import_ray()
        self._started = False
        self._actors: list[Any] = []
        if not ray.is_initialized():
            self._start(address, workers * threads_per_worker)
        try:
            if address is None:
                self._check_resources(workers, threads_per_worker, gpus_per_worker)
            actor = ray.remote(num_cpus=threads_per_worker, num_gpus=gpus_per_worker)(EnvWorker)
            raw = portable_env_config(env_config)
            env_id = kind_of_config(env_config).env_id
            self._actors = [actor.remote(raw, threads_per_worker, env_id)
                            for _ in range(workers)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, cfg: ExecutorConfig, env_config: Any) -> RayExecutor:
        if cfg.batch < cfg.workers:
            print(f"executor: batch={cfg.batch} < workers={cfg.workers}: at most {cfg.batch} "
                  "actor(s) busy at a time; raise executor.batch to use them all", flush=True)
        return cls(env_config, workers=cfg.workers, address=cfg.address,
                   threads_per_worker=cfg.threads_per_worker,
                   gpus_per_worker=cfg.gpus_per_worker)

    def _start(self, address: str | None, cpus: int) -> None:
        if address:
            try:
                self._ray.init(address=address)
            except Exception as err:  # noqa: BLE001 - Ray raises several kinds here
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ConfigError(f"executor.address={address!r}: cannot join the Ray cluster"
                                  f" ({first}); is `ray start --head` running there?") from None
        else:
            # Never fewer CPUs than the actors ask for: an actor Ray cannot place waits
            # forever; more threads than cores is slow, but it runs.
            self._ray.init(num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False)
        self._started = True

    def _check_resources(self, workers: int, threads: int, gpus: float) -> None:
        """Fail now, not hang, when a local runtime is too small for the actors (a cluster
        joined by ``address`` may add nodes on demand: not checked)."""
        have = self._ray.cluster_resources()
        needs = {"CPU": workers * threads, "GPU": workers * gpus}
        for key, need in needs.items():
            if need > have.get(key, 0.0):
                raise ConfigError(
                    f"executor.workers={workers} actors need {need:g} {key}s in all; the Ray "
                    f"runtime has {have.get(key, 0.0):g}. Lower executor.workers, "
                    "threads_per_worker or gpus_per_worker (0.5 shares a GPU between two)"
                )

    def _wait_ready(self) -> None:
        try:
            errors = self._ray.get([a.ready.remote() for a in self._actors])
        except self._ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"Ray workers could not start: {first} (is selfedit-gym "
                               "installed where they run?)") from None
        for error in errors:
            if error is not None:
                raise _worker_error(*error)

    def evaluate(self, env: Any, jobs: list[Job]) -> list[StepOutcome]:
        if not jobs:
            return []
        # Contiguous batches, as even as possible: one per actor (fewer for a small block).
        n = min(len(self._actors), len(jobs))
        bounds = [round(i * len(jobs) / n) for i in range(n + 1)]
        refs = [actor.step_batch.remote(jobs[a:b])
                for actor, a, b in zip(self._actors, bounds, bounds[1:], strict=False)]
        out: list[StepOutcome] = []
        for ref in refs:  # in job order
            out.extend(self._result(ref))
        return out

    def _result(self, ref: Any) -> list[StepOutcome]:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            # The env's own exception (a bad reset option, say), not Ray's wrapper of it.
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as err:
            raise RuntimeError(f"a Ray worker died during a step ({type(err).__name__}); "
                               "out of memory? Lower executor.workers") from None

    def close(self) -> None:
        """Stop the actors (and the Ray runtime, if this executor started it)."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS = {
    "serial": lambda cfg, env_config: SerialExecutor(),
    "ray": RayExecutor.from_config,
}


def make_executor(cfg: ExecutorConfig, env_config: Any) -> SerialExecutor | RayExecutor:
    """The executor ``cfg.type`` names (``env_config``: what Ray actors build)."""
    return EXECUTORS[cfg.type](cfg, env_config)


def check_executor(cfg: ExecutorConfig) -> None:
    """Fail before any model loads when the executor cannot be made (Ray not installed)."""
    if cfg.type == "ray":
        _import_ray()
