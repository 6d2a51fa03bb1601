"""Datasets: the container, validation, splits and HDF5 files."""

from offrl.data.dataset import (
    Dataset,
    DatasetError,
    Normalizer,
    divergence_limit,
    make_dataset,
    mc_returns,
    q_value_range,
    split_episodes,
    transform_rewards,
)
from offrl.data.hdf5 import fingerprint, load_dataset, save_dataset
from offrl.data.importers import FORMATS, import_dataset
from offrl.data.inspect import format_inspection, inspect_dataset

__all__ = [
    "Dataset",
    "DatasetError",
    "divergence_limit",
    "Normalizer",
    "make_dataset",
    "mc_returns",
    "q_value_range",
    "split_episodes",
    "transform_rewards",
    "fingerprint",
    "load_dataset",
    "save_dataset",
    "FORMATS",
    "import_dataset",
    "inspect_dataset",
    "format_inspection",
]
