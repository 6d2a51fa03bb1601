"""The Python API: every public name is a function, even after all subpackages have been imported."""

from __future__ import annotations

import importlib
import inspect

import offrl


def test_api_names_are_functions_and_not_shadowed_by_subpackages():
    for sub in ("offrl.report", "offrl.workflow", "offrl.export", "offrl.training", "offrl.data", "offrl.agents",
                "offrl.envs", "offrl.networks", "offrl.api", "offrl.cli"):
        importlib.import_module(sub)
    for name in offrl.__all__:
        if name == "__version__":
            continue
        obj = getattr(offrl, name)
        assert inspect.isfunction(obj), f"offrl.{name} is {type(obj)}"
        assert obj.__doc__, f"offrl.{name} has no docstring"
