"""Simulated environments; MetaWorld is optional and imported only when a function needs it."""

from offrl.envs.metaworld import (
    DEFAULT_HORIZON,
    DEFAULT_NOISE_SIGMA,
    MetaWorldEnv,
    MultiTaskEnv,
    available_tasks,
    collect_episodes,
    evaluate_policy,
    make_env,
    scripted_policy,
    task_list,
)
from offrl.envs.render import RenderConfig, Renderer

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_NOISE_SIGMA",
    "MetaWorldEnv",
    "MultiTaskEnv",
    "RenderConfig",
    "Renderer",
    "available_tasks",
    "collect_episodes",
    "evaluate_policy",
    "make_env",
    "scripted_policy",
    "task_list",
]
