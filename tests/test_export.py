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


# --- checkpoint ensembles (issue 45) -----------------------------------------------------------------------------

# policy.json (run_dir and exported_by blanked), README.txt (run_dir blanked) and actor.msgpack of the fixture's
# step-80 export with compiled=False, as offrl wrote them before ensembles existed (commit d0359c8).
BEFORE_ENSEMBLES = {
    "policy.json": "31c60c3241063b912b9cde5480ffe90360fdeb26b02223d22c38c95834d005c8",
    "README.txt": "aad21921d69eb37dcd6f96579c707894422181ea9e17866956331031f3aba988",
    "actor.msgpack": "d0ec20804cb3a0ec50c255bf9c7023a2f72a9abcbbf0f2a64f91800e48cbb1bf",
}


def _pinned_hashes(out: Path, run: Path) -> dict[str, str]:
    import hashlib

    spec = json.loads((out / "policy.json").read_text())
    assert spec["source"]["run_dir"] == str(run.resolve())
    spec["source"]["run_dir"], spec["exported_by"] = "RUN", "VERSIONS"
    texts = {"policy.json": (json.dumps(spec, indent=2) + "\n").encode(),
             "README.txt": (out / "README.txt").read_text().replace(str(run.resolve()), "RUN").encode(),
             "actor.msgpack": (out / "actor.msgpack").read_bytes()}
    return {name: hashlib.sha256(data).hexdigest() for name, data in texts.items()}


@pytest.fixture(scope="module")
def ensemble_export(tmp_path_factory):
    """The fixture run (checkpoints 40 and 80) exported as the ensemble of both, selected step 80."""
    run = _copy_run(tmp_path_factory.mktemp("ensemble") / "run")
    return run, ex.export_policy(run, step=80, out=run.parent / "policy", ensemble=2, compiled=HAS_FLATBUFFERS)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_flatbuffers)])
def test_ensemble_export_is_the_mean_of_its_checkpoints_actions(ensemble_export, compiled):
    run, out = ensemble_export
    policy = ex.load_policy(out, compiled=compiled)
    obs = _observations(6, seed=3)
    members = [load_training_policy(run, s)(obs) for s in (40, 80)]
    want = np.mean(np.stack(members), axis=0)  # mean of the squashed actions, tanh(mu(normalize(obs)))
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the two checkpoints act differently: a real test
    got = policy(obs)
    assert got.shape == (6, ACT_DIM) and got.dtype == np.float32
    if compiled:  # jnp.mean over jax.vmap of the members: equal to float32 rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(policy(obs[0]), want[0], rtol=0, atol=1e-6)  # unbatched


def test_ensemble_export_records_its_members(ensemble_export, monkeypatch):
    run, out = ensemble_export
    spec = ex.read_policy_spec(out)
    assert spec["format_version"] == 4 and spec["ensemble"] == 2
    assert spec["source"]["steps"] == [40, 80] and spec["source"]["step"] == 80
    assert spec["source"]["actor"] == "trained" and "mean, over the 2 checkpoints" in spec["contract"]["action"]
    assert "the mean action of steps 40, 80" in (out / "README.txt").read_text()
    assert _leftovers(run.parent) == []
    # An offrl from before ensembles (format version 3) refuses the export instead of misreading it.
    monkeypatch.setattr(ex, "FORMAT_VERSION", 3)
    with pytest.raises(ValueError, match="format version 4.*upgrade offrl"):
        ex.load_policy(out)


def test_ensemble_export_refuses_parameters_that_do_not_fit(ensemble_export, tmp_path):
    _, out = ensemble_export
    copy = shutil.copytree(out, tmp_path / "copy")
    spec = json.loads((copy / "policy.json").read_text())
    spec["ensemble"] = 3  # two members stored
    (copy / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="an ensemble of 3 TanhGaussianActor"):
        ex.load_policy(copy)


def test_single_checkpoint_export_is_unchanged_by_ensembles(tmp_path):
    run = _copy_run(tmp_path / "run")
    out = ex.export_policy(run, step=80, out=tmp_path / "k1", compiled=False, ensemble=1)
    assert _pinned_hashes(out, run) == BEFORE_ENSEMBLES
    spec = ex.read_policy_spec(out)
    assert spec["format_version"] == 1 and "ensemble" not in spec and "steps" not in spec["source"]


def test_too_few_checkpoints_for_the_ensemble_exit_1_and_write_nothing(tmp_path, capsys):
    from offrl.cli import main

    run = _copy_run(tmp_path / "run")
    for argv in (["--ensemble", "3", "--step", "80"], ["--ensemble", "2", "--step", "40"]):
        assert main(["export", str(run), "--out", str(tmp_path / "policy"), *argv]) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        assert err.startswith(f"offrl: error: --ensemble {argv[1]} needs {argv[1]} checkpoints ending at step")
        assert "lower --ensemble" in err
    with pytest.raises(ValueError, match="whole number of checkpoints >= 1"):
        ex.export_policy(run, step=80, out=tmp_path / "policy", ensemble=0)
    assert not (tmp_path / "policy").exists() and _leftovers(tmp_path) == []


def test_a_trajectory_transformer_run_refuses_an_ensemble(tmp_path, capsys):
    from offrl.cli import main

    run = _copy_run(tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["algo"] = "tt"  # the refusal reads config.json before any checkpoint is restored
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["export", str(run), "--step", "80", "--ensemble", "2", "--out", str(tmp_path / "policy")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "Trajectory Transformer" in err and "--ensemble 1" in err
    assert not (tmp_path / "policy").exists() and _leftovers(tmp_path) == []


def test_cli_exports_an_ensemble(tmp_path, capsys):
    from offrl.cli import main

    run = _copy_run(tmp_path / "run")
    assert main(["export", str(run), "--step", "80", "--ensemble", "2", "--out", str(tmp_path / "policy")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert ex.read_policy_spec(tmp_path / "policy")["source"]["steps"] == [40, 80]


def test_the_ensemble_is_the_chosen_step_and_the_complete_checkpoints_just_before_it(tmp_path):
    run = _copy_run(tmp_path / "run")
    ckpt = run / "checkpoints"
    shutil.copytree(ckpt / "40", ckpt / "20")
    shutil.copytree(ckpt / "80", ckpt / "60")
    shutil.copytree(ckpt / "80" / "state", ckpt / "70" / "state")  # incomplete: no _CHECKPOINT_METADATA
    obs = _observations(5, seed=4)
    for step, steps in ((80, [40, 60, 80]), (60, [20, 40, 60])):
        out = ex.export_policy(run, step=step, out=tmp_path / f"p{step}", ensemble=3, compiled=False)
        assert ex.read_policy_spec(out)["source"]["steps"] == steps
        want = np.mean(np.stack([load_training_policy(run, s)(obs) for s in steps]), axis=0)
        np.testing.assert_array_equal(ex.load_policy(out)(obs), want)
