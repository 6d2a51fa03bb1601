"""Policy export: the exported folder reproduces the checkpoint's actions, is written atomically, and loads
without the training stack."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from offrl import export as ex
from offrl.training.policy import checkpoint_policy as load_training_policy

FIXTURE = Path(__file__).parent / "fixtures" / "run_format_v1"  # cql, steps 40 and 80, obs_dim 3, act_dim 2
OBS_DIM, ACT_DIM = 3, 2
# jax.export (de)serialisation needs flatbuffers, an optional JAX dependency: the compiled form is tested only
# where it is installed.
HAS_FLATBUFFERS = importlib.util.find_spec("flatbuffers") is not None
needs_flatbuffers = pytest.mark.skipif(not HAS_FLATBUFFERS, reason="jax.export serialisation needs flatbuffers")


def _copy_run(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    return dest


def _leftovers(folder: Path) -> list[str]:
    """Temporary or set-aside export folders (hidden siblings) left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-"
                                                                                    in p.name))


def _observations(batch: int, seed: int = 0) -> np.ndarray:
    return (3.0 * np.random.default_rng(seed).normal(size=(batch, OBS_DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A copy of the fixture run, diagnosed to select its last checkpoint, exported with the defaults (out:
    RUN_DIR/policy)."""
    run = _copy_run(tmp_path_factory.mktemp("export") / "run")
    (run / "diagnosis.json").write_text(json.dumps({"verdict": "healthy", "selected_step": 80}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no flatbuffers": tested on its own below
        out = ex.export_policy(run)
    return run, out


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_flatbuffers)])
def test_exported_policy_matches_training_policy(exported, compiled):
    run, out = exported
    reference = load_training_policy(run, 80)
    policy = ex.load_policy(out, compiled=compiled)
    for batch in (1, 5):
        obs = _observations(batch, seed=batch)
        got, want = policy(obs), reference(obs)
        assert got.shape == (batch, ACT_DIM) and got.dtype == np.float32
        if compiled:  # a separately compiled program: equal to float32 rounding, not always bit for bit
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    single = _observations(1, seed=7)
    got = policy(single[0].astype(np.float64))  # unbatched, and any float dtype
    assert got.shape == (ACT_DIM,) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(single)[0], rtol=0, atol=1e-6 if compiled else 0)
    assert policy(np.zeros((0, OBS_DIM))).shape == (0, ACT_DIM)


def test_export_folder_contents(exported):
    run, out = exported
    assert out == run / "policy"
    names = {p.name for p in out.iterdir()}
    assert {"policy.json", "actor.msgpack", "README.txt"} <= names
    assert ("policy.jax_export" in names) == HAS_FLATBUFFERS
    spec = json.loads((out / "policy.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert spec["format_version"] == 1 and spec["algo"] == "cql"  # state exports stay readable by offrl 0.1
    assert spec["observation"] == {"mode": "state"} and spec["actor_encoder"] == "cnn"
    assert (spec["obs_dim"], spec["act_dim"], spec["actor_hidden_dims"]) == (OBS_DIM, ACT_DIM, [8])
    assert spec["normalizer"] == config["normalizer"]
    assert spec["source"]["step"] == 80 and spec["source"]["step_source"] == "diagnosis.json"
    assert spec["source"]["run_dir"] == str(run.resolve())
    assert spec["source"]["dataset_fingerprint"] == config["dataset"]["fingerprint"]
    assert spec["action_low"] is None  # the fixture's dataset records no bounds
    assert "tanh" in spec["contract"]["action"]
    assert len((out / "README.txt").read_text().splitlines()) == 3
    assert _leftovers(run) == []


def test_step_follows_diagnosis_and_bounds_are_recorded(tmp_path):
    run = _copy_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["dataset"]["metadata"].update(action_low=[-1.0, -0.5], action_high=[1.0, 0.5])
    (run / "config.json").write_text(json.dumps(config))
    (run / "diagnosis.json").write_text(json.dumps({"verdict": "overfitting", "selected_step": 40}))

    out = ex.export_policy(run, out=tmp_path / "deploy" / "p40", compiled=False)
    spec = ex.read_policy_spec(out)
    assert spec["source"]["step"] == 40 and spec["source"]["step_source"] == "diagnosis.json"
    assert (spec["action_low"], spec["action_high"]) == ([-1.0, -0.5], [1.0, 0.5])
    obs = _observations(5)
    np.testing.assert_array_equal(ex.load_policy(out)(obs), load_training_policy(run, 40)(obs))
    with pytest.raises(FileNotFoundError, match="policy.jax_export"):
        ex.load_policy(out, compiled=True)  # exported with compiled=False

    (run / "diagnosis.json").write_text(json.dumps({"verdict": "diverged", "selected_step": None}))
    with pytest.raises(ValueError, match="selects no checkpoint.*--step"):
        ex.export_policy(run, out=tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="step 120"):
        ex.export_policy(run, step=120, out=tmp_path / "none")
    assert not (tmp_path / "none").exists() and _leftovers(tmp_path) == []


def test_overwrite_is_explicit_and_atomic(tmp_path, monkeypatch):
    run = _copy_run(tmp_path / "run")
    out = ex.export_policy(run, step=80, out=tmp_path / "policy", compiled=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(FileExistsError, match="overwrite"):
        ex.export_policy(run, step=40, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # A failure after the new folder was written (here: its check) leaves the old export and no temporary.
    def broken(*args):
        raise RuntimeError("check failed")

    monkeypatch.setattr(ex, "_verify", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        ex.export_policy(run, step=40, out=out, overwrite=True, compiled=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()

    ex.export_policy(run, step=40, out=out, overwrite=True, compiled=False)
    assert ex.read_policy_spec(out)["source"]["step"] == 40
    assert _leftovers(tmp_path) == []

    # overwrite never deletes a folder that is not an export, such as the run directory itself.
    with pytest.raises(FileExistsError, match="not an offrl policy export"):
        ex.export_policy(run, out=run, overwrite=True)
    assert (run / "checkpoints" / "80").is_dir()


def test_without_flatbuffers_the_export_still_works(tmp_path, monkeypatch):
    def no_flatbuffers(*args):
        raise ImportError("Please install 'flatbuffers'")

    monkeypatch.setattr(ex, "_export_compiled", no_flatbuffers)
    run = _copy_run(tmp_path / "run")
    with pytest.raises(ImportError, match="flatbuffers"):
        ex.export_policy(run, step=80, out=tmp_path / "required", compiled=True)
    assert not (tmp_path / "required").exists()
    with pytest.warns(UserWarning, match="flatbuffers"):
        out = ex.export_policy(run, step=80, out=tmp_path / "optional")
    assert not (out / "policy.jax_export").exists()
    assert "flatbuffers" in (out / "README.txt").read_text()
    with pytest.raises(FileNotFoundError, match="flatbuffers"):
        ex.load_policy(out, compiled=True)


def test_load_errors(exported, tmp_path):
    _, out = exported
    policy = ex.load_policy(out)
    for bad in (np.zeros(OBS_DIM + 1), np.zeros((4, OBS_DIM - 1)), np.zeros((2, 2, OBS_DIM))):
        expected = f"({OBS_DIM},) or (B, {OBS_DIM}) for this policy; got {bad.shape}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            policy(bad)

    with pytest.raises(FileNotFoundError, match="not found"):
        ex.load_policy(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "actor.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match="actor.msgpack"):
        ex.load_policy(copy)
    (copy / "actor.msgpack").write_bytes((out / "actor.msgpack").read_bytes()[:-8])  # a truncated copy
    with pytest.raises(ValueError, match="hash"):
        ex.load_policy(copy)
    spec = json.loads((copy / "policy.json").read_text())
    spec["format_version"] = ex.FORMAT_VERSION + 1
    (copy / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="format version"):
        ex.load_policy(copy)
    (copy / "policy.json").unlink()
    with pytest.raises(FileNotFoundError, match="policy.json"):
        ex.load_policy(copy)


def test_loading_needs_no_training_stack(exported):
    """A fresh interpreter loads the export without importing training, dataset, Orbax or MetaWorld code;
    the compiled form without Flax or the network code either."""
    _, out = exported
    script = f"""
import sys
import numpy as np
from offrl.export import load_policy

def imported(prefixes):
    return sorted(m for m in sys.modules if m.split(".")[0] in prefixes or m.startswith(prefixes))

if {HAS_FLATBUFFERS}:
    a = load_policy({str(out)!r}, compiled=True)(np.zeros({OBS_DIM}))
    assert a.shape == ({ACT_DIM},), a.shape
    assert not imported(("flax", "offrl.networks")), imported(("flax", "offrl.networks"))
a = load_policy({str(out)!r})(np.zeros((2, {OBS_DIM})))
assert a.shape == (2, {ACT_DIM}), a.shape
banned = ("offrl.training", "offrl.data", "offrl.agents", "offrl.workflow", "orbax", "optax", "metaworld",
          "mujoco", "h5py")
assert not imported(banned), imported(banned)
print("ok")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_an_undiagnosed_run_is_exported_at_the_step_its_recorded_rule_selects(tmp_path):
    # Issue "One story": export, like select, reads the rule the run recorded when it was trained.
    from offrl.workflow.diagnosis import diagnose_run

    run = _copy_run(tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["deployment"] = {"selector": "last"}
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "diagnosis.json").unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = ex.export_policy(run, out=tmp_path / "policy")
    spec = json.loads((out / ex.POLICY_FILE).read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert spec["source"]["step"] == last and "--selector last" in spec["source"]["step_source"]
    assert diagnose_run(run, write=False)["selector"] == "last"
