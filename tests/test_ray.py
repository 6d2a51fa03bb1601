"""`offrl study --ray` and `offrl sweep --ray` on a real Ray cluster of two nodes on this machine (a head and a
second worker node, one CPU each): a sweep matches the local one; a study whose worker is killed in the middle of
a cell finishes with the local run's results, the cell resumed elsewhere from its last checkpoint; a bad cell
fails alone, once; a node that does not see the study directory stops everything before it runs.

The compiled programs are shared through JAX's persistent compilation cache (a folder of this module's), so that
the file stays within a few minutes on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import chain_arrays, tiny_train_config

ray = pytest.importorskip("ray")

from offrl.data import make_dataset, save_dataset  # noqa: E402
from offrl.training import run_dir as rd  # noqa: E402

pytestmark = pytest.mark.slow

STUDY = """
out = "{out}"
steps = 200
checkpoint_every = 50
eval_episodes = 2
horizon = 60
noise_sigma = 0.3
fqe_steps = 50
bootstrap_samples = 200

[settings.small]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = 10

[settings.small_vib]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = 10
vib_dim = 4

[settings.bad]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
gamma = 1.5

[[scenario]]
name = "tiny"
tasks = ["reach-v3"]
episodes = [4]
settings = {settings}
"""
BAD = "reach-v3__4ep__s0__bad"
# What a Ray cell runs with (offrl.cluster._task_env, one CPU per cell); the local reference runs with the same, so
# that it finds the programs the cells compiled in the cache (the results do not depend on it: the local run with
# multi-threaded XLA writes the same files).
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    # RAY_AUTH_MODE: the same for every process of the test cluster, whether or not ~/.ray/auth_token exists
    # (Ray >= 2.59 turns token authentication on where it finds one).
    env = {"JAX_PLATFORMS": "cpu", "MUJOCO_GL": "egl", "OFFRL_HUGEPAGES": "0", "RAY_AUTH_MODE": "disabled",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)  # inherited by the nodes' processes and the commands the tests start
        small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
        c = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
        worker = c.add_node(**small)
        c.wait_for_nodes()
        try:
            yield c, worker
        finally:
            c.shutdown()


def _offrl(*args, cwd, **env):
    return [sys.executable, "-m", "offrl.cli", *args], {"cwd": cwd, "env": {**os.environ, **env}}


def test_sweep_on_the_cluster_matches_the_local_sweep(cluster, tmp_path):
    from offrl.training.sweep import SweepConfig, sweep

    c, _ = cluster
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=12), {"task": "toy"}))
    base = tiny_train_config(data, tmp_path / "local", steps=60, checkpoint_every=20)
    local = sweep(SweepConfig(base, param="alpha", values=(0.5, 5.0)))
    ray.init(address=c.address, log_to_driver=False)
    try:
        on_ray = sweep(SweepConfig(tiny_train_config(data, tmp_path / "ray", steps=60, checkpoint_every=20),
                                   param="alpha", values=(0.5, 5.0), ray=c.address))
    finally:
        ray.shutdown()
    assert [r.name for r in on_ray] == [r.name for r in local] == ["alpha=0.5_s0", "alpha=5_s0"]
    for a, b in zip(local, on_ray, strict=True):
        ra, rb = rd.read_metrics(a), rd.read_metrics(b)
        assert [r["step"] for r in ra] == [r["step"] for r in rb] == [20, 40, 60]
        for x, y in zip(ra, rb, strict=True):   # vectorised vs one run per task: float tolerance (test_sweep)
            for k in ("q_data", "td_error", "heldout/q_data", "train/critic_loss"):
                assert y[k] == pytest.approx(x[k], rel=2e-3, abs=2e-4), (b.name, x["step"], k)
        ca, cb = rd.read_json(a / rd.CONFIG_FILE), rd.read_json(b / rd.CONFIG_FILE)
        assert cb["agent"] == ca["agent"] and cb["seed"] == ca["seed"]
        assert cb["sweep"] == {**ca["sweep"], "dir": str(tmp_path / "ray")}
        assert (tmp_path / "ray" / ".ray" / f"{b.name}.log").is_file()


def _complete_steps(run: Path) -> list[int]:
    folder = run / rd.CHECKPOINT_DIR
    return sorted(int(p.parent.name) for p in folder.glob("*/_CHECKPOINT_METADATA") if p.parent.name.isdigit())


def _comparable(cell: dict, study: Path) -> dict:
    cell = {k: v for k, v in cell.items() if k != "timings_s"}
    return json.loads(json.dumps(cell).replace(str(study), "STUDY"))


@pytest.mark.sim
def test_study_survives_a_killed_worker_and_a_bad_cell(cluster, tmp_path):
    pytest.importorskip("metaworld")
    c, worker = cluster
    study = tmp_path / "ray" / "study"
    path = tmp_path / "ray.toml"
    path.write_text(STUDY.format(out=study, settings='["bad", "small", "small_vib"]'))
    cmd, kw = _offrl("study", str(path), "--ray", c.address, cwd=tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    victim = None
    deadline = time.time() + 400
    try:
        # Kill the worker process of the cell on the second node once it has a complete checkpoint but not its
        # last, then the node itself: the cell must be retried on the head and resume there.
        while victim is None and proc.poll() is None and time.time() < deadline:
            for rec_path in (study / "ray").glob("*.json"):
                try:
                    rec = json.loads(rec_path.read_text())
                except (ValueError, OSError):
                    continue
                if rec["node_id"] != worker.node_id or rec["cell"] == BAD:
                    continue
                steps = _complete_steps(study / "cells" / rec["cell"])
                if steps and steps[-1] < 200:
                    os.kill(rec["pid"], signal.SIGKILL)
                    c.remove_node(worker, allow_graceful=False)
                    victim = (rec["cell"], steps[-1])
                    break
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no cell could be caught in the middle of its training on the second node"
    assert proc.returncode == 0, output[-3000:]

    # The killed cell ran again on another node, from its last complete checkpoint (or one after it: the kill
    # may land between a checkpoint's completion and the check).
    rec = json.loads((study / "ray" / f"{victim[0]}.json").read_text())
    assert rec["attempt"] >= 2 and rec["node_id"] != worker.node_id
    assert victim[1] <= rec["resumed_from"] < 200, rec
    assert f"resumed from step {rec['resumed_from']}" in output
    # The bad cell failed once, with its own message, and the others went on.
    assert "gamma must be in [0, 1)" in (study / "failed" / f"{BAD}.txt").read_text()
    assert json.loads((study / "ray" / f"{BAD}.json").read_text())["attempt"] == 1
    analysis = json.loads((study / "analysis.json").read_text())
    assert analysis["runs"] == 2 and analysis["cells_total"] == 3
    assert [f["cell"] for f in analysis["failed"]] == [BAD] and "gamma must be" in analysis["failed"][0]["error"]
    assert f"{BAD} failed" in output and "done 2, running 0, failed 1" in output
    assert (study / "results.md").is_file()

    # The same study run locally (without the bad cell): the same cells, checkpoints, metrics and analysis.
    ref = tmp_path / "local" / "study"
    ref_path = tmp_path / "local.toml"
    ref_path.write_text(STUDY.format(out=ref, settings='["small", "small_vib"]'))
    cmd, kw = _offrl("study", str(ref_path), cwd=tmp_path, XLA_FLAGS=SINGLE_THREAD)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.parent.name for p in (ref / "cells").glob("*/cell.json"))
    assert names == sorted(p.parent.name for p in (study / "cells").glob("*/cell.json")) and len(names) == 2
    for name in names:
        a = _comparable(rd.read_json(ref / "cells" / name / "cell.json"), ref)
        b = _comparable(rd.read_json(study / "cells" / name / "cell.json"), study)
        assert a == b, name
        strip = ("time_s", "steps_per_s")
        ma = [{k: v for k, v in r.items() if k not in strip} for r in rd.read_metrics(ref / "cells" / name)]
        mb = [{k: v for k, v in r.items() if k not in strip} for r in rd.read_metrics(study / "cells" / name)]
        assert ma == mb, name
    ra = json.loads((ref / "analysis.json").read_text())
    drop = ("failed", "cells_total")
    assert {k: v for k, v in analysis.items() if k not in drop} == {k: v for k, v in ra.items() if k not in drop}


def test_a_node_without_the_study_directory_stops_the_study_before_it_runs(tmp_path, monkeypatch):
    """Two fake nodes: the second resolves the head's relative study path from another working directory, as a
    node whose disk has a folder of the same name but not the shared one would; nothing may run."""
    from offrl import cluster as cl
    from offrl.study.config import study_config_from_dict
    from offrl.study.run import run_study

    a, b = "a" * 56, "b" * 56   # node ids
    elsewhere = tmp_path / "node_b"
    (elsewhere / "s" / "ray").mkdir(parents=True)
    current = {"node": None}

    class Remote:
        def __init__(self, fn):
            self.fn = fn

        def options(self, scheduling_strategy, **_):
            current["node"] = scheduling_strategy.node_id
            return self

        def remote(self, probe, cwd, token, must_exist):
            node = current["node"]
            monkeypatch.setattr(cl, "_node", lambda: (node, "10.0.0.2" if node == b else "10.0.0.1"))
            try:  # the probe enters the node's working directory: this process's must stay
                return self.fn(probe, str(elsewhere) if node == b else cwd, token, must_exist)
            finally:
                os.chdir(tmp_path)

    class FakeRay:
        exceptions = ray.exceptions

        @staticmethod
        def nodes():
            return [{"NodeID": n, "Alive": True, "NodeManagerAddress": n, "Resources": {"CPU": 1.0}}
                    for n in (a, b)]

        remote = Remote

        @staticmethod
        def get(answers, timeout=None):
            return answers

    monkeypatch.setattr(cl, "connected", lambda address: _yield(FakeRay))
    monkeypatch.chdir(tmp_path)
    config = study_config_from_dict({"out": "s", "scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5]}]})
    with pytest.raises(cl.SharedStorageError, match=r"1 of 2 nodes .* node 10\.0\.0\.2 does not see .*node_b/s/ray"):
        run_study(config, ray=cl.RayOptions("10.0.0.1:6379"))
    assert not (tmp_path / "s" / "cells").exists() and not (tmp_path / "s" / "data").exists()
    assert not list((tmp_path / "s" / "ray").glob("probe-*"))  # the probe files are removed
    # A node that does see it passes.
    cl.check_shared_storage(type("OneNode", (FakeRay,), {"nodes": staticmethod(lambda: FakeRay.nodes()[:1])}),
                            Path("s") / "ray")


def _yield(value):
    import contextlib

    @contextlib.contextmanager
    def cm():
        yield value

    return cm()


def test_without_ray_installed_the_flag_says_how_to_install(monkeypatch, tmp_path, capsys):
    from offrl.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)   # import ray raises ImportError
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(out=tmp_path / "s", settings='["small"]'))
    for args in (["study", str(path), "--ray"], ["study", "--ray", str(path), "--ray-cpus-per-cell", "2"]):
        assert main(args) == 1   # `--ray` alone, last or before the study file, means a local Ray instance
        assert "pip install 'offrl[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()   # nothing written


def test_an_address_where_no_cluster_answers_is_an_error_at_once(tmp_path, capsys):
    from offrl.cli import main

    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(out=tmp_path / "s", settings='["small"]'))
    t = time.perf_counter()
    assert main(["study", str(path), "--ray", "127.0.0.1:1"]) == 1
    assert "no Ray cluster answers at '127.0.0.1:1'" in capsys.readouterr().err
    assert time.perf_counter() - t < 30 and not (tmp_path / "s" / "cells").exists()
