"""Experiment tracking: TensorBoard event files in every run, W&B behind an extra."""

from __future__ import annotations

import struct
import sys

import pytest
from conftest import chain_arrays, tiny_train_config

from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.train import train


def _read_events(path):
    """Scalars of a TensorBoard event file (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out = {}
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_every_checkpoint_record_is_in_tensorboard(tmp_path):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10)))
    out = train(tiny_train_config(data, tmp_path / "run"))
    files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = _read_events(files[0])
    for rec in rd.read_metrics(out):
        for key in ("q_data", "td_error", "heldout/q_data", "train/critic_loss"):
            assert scalars[key][rec["step"]] == pytest.approx(rec[key], rel=1e-6)


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10)))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(ValueError, match=r"pip install 'offrl\[wandb\]'"):
        train(tiny_train_config(data, tmp_path / "run", wandb_project="p"))
    assert not (tmp_path / "run").exists()  # refused before anything was written
