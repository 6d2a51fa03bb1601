"""offrl: offline RL for robots, with the workflow that says whether to trust the policy.

Implements Kumar, Singh, Tian, Finn, Levine, "A Workflow for Offline Model-Free Robotic Reinforcement
Learning" (CoRL 2021): conservative offline RL (CQL, BRAC) plus the metrics, diagnosis and checkpoint
selection that work without running the robot. The functions below mirror the `offrl` commands; they are
imported on first use so that ``import offrl`` stays light.
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("offrl")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

# public name -> "module:attribute"
_API = {
    "collect": "offrl.api:collect",
    "train": "offrl.api:train",
    "diagnose": "offrl.api:diagnose",
    "select": "offrl.api:select",
    "evaluate": "offrl.api:evaluate",
    # Not "report"/"workflow": those are subpackages, whose modules would shadow the functions once imported.
    "write_report": "offrl.api:write_report",
    "run_workflow": "offrl.api:run_workflow",
    "load_dataset": "offrl.data:load_dataset",
    "save_dataset": "offrl.data:save_dataset",
    "import_dataset": "offrl.data.importers:import_dataset",
    "inspect_dataset": "offrl.data.inspect:inspect_dataset",
    "export_policy": "offrl.export:export_policy",
    "load_policy": "offrl.export:load_policy",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name].split(":")
        return getattr(_import_module(module), attr)
    raise AttributeError(f"module 'offrl' has no attribute {name!r}")
