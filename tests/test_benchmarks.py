"""Every script in benchmarks/ runs at a tiny size and prints the JSON object it promises, so that a benchmark cannot
break unnoticed (issue 44: `make bench` stopped with KeyError 'mc_returns'). Each script's ``main`` runs in this
process (as ``__main__``, with its own argv), which saves a Python + JAX start per script; the scripts that start
processes of their own (startup, workers_speed, image_memory, ray_study) still do. Speed is never asserted: only
that each number exists and is positive, and the facts the sizes fix."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import chain_arrays

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "timing.py")
"""The benchmark scripts (timing.py is their shared module, not a script)."""


def run_script(name: str, args: list[str], monkeypatch, capsys) -> dict:
    """Run benchmarks/NAME as ``python NAME ARGS`` would, in this process; the JSON object it printed."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import timing.py and each other as top-level modules
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
    capsys.readouterr()
    runpy.run_path(str(BENCH / name), run_name="__main__")
    out = capsys.readouterr().out
    return json.loads(out[: out.rindex("}") + 1])


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_every_script_has_a_smoke_test():
    tested = {n.removeprefix("test_").replace("_smoke", "") + ".py" for n in globals() if n.endswith("_smoke")}
    assert set(SCRIPTS) == tested, f"benchmarks without a smoke test: {sorted(set(SCRIPTS) - tested)}"


def test_diagnosis_calibration_smoke(monkeypatch, capsys):
    out = run_script("diagnosis_calibration.py", ["--trials", "2"], monkeypatch, capsys)
    assert out["trials"] == 2
    for noise in ("noise_0.01", "noise_0.03", "noise_0.05"):
        rates = out[noise]
        assert set(rates) == {"plateau_false_alarm_rate", "rise_fall_detection_rate",
                              "peak_within_one_checkpoint_rate"}
        assert all(r in (0.0, 0.5, 1.0) for r in rates.values())  # k of 2 trials


def test_image_speed_smoke(monkeypatch, capsys):
    out = run_script("image_speed.py", ["--steps", "1", "--size", "16", "--batch-size", "8", "--transitions", "120",
                                        "--settings", "cnn_fc256x3"], monkeypatch, capsys)
    assert out["image"] == [16, 16, 3] and out["batch_size"] == 8
    row = out["cnn_fc256x3"]
    assert positive(row["steps_per_s"]) and row["compile_plus_first_call_s"] >= 0
    assert positive(row["params"]["critic"]) and positive(row["params"]["actor"])


def test_speed_smoke(monkeypatch, capsys):
    """The offrl side of `make bench` at a tiny size: calibrated CQL's state and image sections (the image section
    is where the random data once lacked Cal-QL's mc_returns). d3rlpy is made unimportable,
    as in the test environment (no `bench` extra): its keys are null and the notes say why."""
    monkeypatch.setitem(sys.modules, "d3rlpy", None)  # `import d3rlpy` raises ImportError
    out = run_script("speed.py", ["--smoke", "--no-hugepages", "--algos", "cql_calibrated"], monkeypatch, capsys)
    assert set(out["results"]) == {"cql_calibrated"}
    assert out["notes"]["d3rlpy_skipped"].startswith("not installed")
    assert out["notes"]["offrl_configs"]["cql_calibrated"]["calibrated"] is True
    for kind in ("state", "image"):
        row = out["results"]["cql_calibrated"][kind]
        assert positive(row["offrl_steps_per_s"])
        assert row["d3rlpy_steps_per_s"] is None and row["ratio_vs_fastest_d3rlpy"] is None
    assert positive(out["offrl_state_step_flops"]["cql_calibrated"])
    assert positive(out["offrl_fraction_of_matmul"]["cql_calibrated"]) and positive(out["matmul_gflops"])


def test_speed_settings_match_the_default_job_and_the_paper():
    """What `make bench` compares: IQL as the iql-sparse preset sets it, CQL with calibration on and off."""
    sys.path.insert(0, str(BENCH))
    try:
        import speed
    finally:
        sys.path.remove(str(BENCH))
    from offrl.presets import get_preset

    assert speed.ALGOS == ("iql", "cql_calibrated", "cql")
    algo, iql = speed.offrl_config("iql")
    preset = get_preset("iql-sparse")
    assert algo == "iql" and (iql.expectile, iql.inverse_temperature) == (0.9, 10.0)
    assert iql.actor_lr_decay_steps == preset.steps
    assert speed.offrl_config("cql_calibrated")[1].calibrated and not speed.offrl_config("cql")[1].calibrated
    tiny = speed.sized(iql, speed.SMOKE)
    assert tiny.critic_hidden_dims == tiny.value_hidden_dims == tiny.actor_hidden_dims == (16, 16)
    args = speed.parse_args(["--smoke"])
    assert (args.steps, args.image_steps) == (2, 1) and args.algos == list(speed.ALGOS)


def test_train_speed_smoke(monkeypatch, capsys):
    out = run_script("train_speed.py", ["--steps", "2", "--only", "cql_default"], monkeypatch, capsys)
    assert set(out) == {"cql_default", "machine"}
    assert positive(out["cql_default"]["steps_per_s"])


def test_sweep_speed_smoke(monkeypatch, capsys):
    out = run_script("sweep_speed.py", ["--smoke", "--steps", "2", "--k", "2"], monkeypatch, capsys)
    (row,) = out["sweep"]
    assert row["k"] == 2 and out["settings"]["batch"] == 16
    assert positive(row["vmapped_run_steps_per_s"]) and positive(row["sequential_run_steps_per_s"])
    assert positive(row["ratio"])


def test_tt_planning_smoke(monkeypatch, capsys):
    out = run_script("tt_planning.py", ["--smoke", "--repeats", "1", "--train-steps", "2"], monkeypatch, capsys)
    row = out["default"]
    assert out["shapes"]["tokens_per_transition"] == 45
    assert [p["batch"] for p in row["planning"]] == [1] and positive(row["planning"][0]["ms_per_action"])
    assert [t["batch"] for t in row["training"]] == [16] and positive(row["training"][0]["steps_per_s"])
    assert positive(row["params"])


def test_workers_speed_smoke(monkeypatch, capsys):
    out = run_script("workers_speed.py", ["--smoke", "--steps", "2", "--workers", "1"], monkeypatch, capsys)
    assert out["workers"] == 1 and len(out["per_worker_single_thread_steps_per_s"]) == 1
    assert positive(out["one_process_multi_thread_steps_per_s"]) and positive(out["total_workers_steps_per_s"])


def test_startup_smoke(monkeypatch, capsys):
    out = run_script("startup.py", ["--repeats", "1"], monkeypatch, capsys)
    for cmd in ("python", "import_cli", "help", "select", "import_train", "train_help", "train_error",
                "train_error_no_reexec"):
        assert positive(out[cmd]["best_s"]) and out[cmd]["median_s"] == out[cmd]["best_s"], cmd
    assert out["repeats"] == 1


def test_q_slide_smoke(tmp_path, monkeypatch, capsys):
    from offrl.data import make_dataset, save_dataset

    data = save_dataset(tmp_path / "chain.h5", make_dataset(chain_arrays(episodes=4), {"task": "toy"}))
    out = run_script("q_slide.py", [str(data), "--smoke", "--variants", "no_entropy", "calql"], monkeypatch, capsys)
    assert out["smoke"] is True and set(out["results"]) == {"no_entropy", "calql"}
    for records in out["results"].values():  # a checkpoint every 3 of 6 steps
        assert [r["step"] for r in records] == [3, 6]
        assert all(np.isfinite([r["q_data"], r["q_policy"], r["td_error"], r["entropy"]]).all() for r in records)


def test_image_memory_smoke(tmp_path, monkeypatch, capsys):
    out = run_script("image_memory.py", ["--smoke", "--transitions", "300", "--size", "16", "--steps", "2",
                                         "--workdir", str(tmp_path)], monkeypatch, capsys)
    assert out["transitions"] == 300 and out["frames"] == 302  # two episodes of 150 transitions: 151 states each
    assert out["image"] == [16, 16, 3] and out["train_steps"] == 2
    assert positive(out["peak_rss_gb"]) and (tmp_path / "run_300_16" / "config.json").is_file()


@pytest.mark.sim
def test_regimes_smoke(monkeypatch, capsys):
    pytest.importorskip("metaworld")
    from offrl.envs.behaviour import REGIMES

    out = run_script("regimes.py", ["--episodes", "1", "--tasks", "reach-v3"], monkeypatch, capsys)
    assert out["episodes"] == 1 and set(out["results"]) == set(REGIMES)
    for row in out["results"].values():
        assert row["reach-v3"]["success_rate"] in (0.0, 1.0) and len(row["reach-v3"]["ci95"]) == 2


@pytest.mark.sim
@pytest.mark.slow
def test_ray_study_smoke(monkeypatch, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("metaworld")
    # One cell (the setting small alone): the Ray path end to end at half the two-cell smoke's time (376 s of the
    # suite's slowest test, measured under load); tests/test_ray.py covers several cells, retries and failures.
    out = run_script("ray_study.py", ["--smoke", "--cells", "1", "--steps", "6"], monkeypatch, capsys)
    assert out["cells"] == 1 and len(out["cell_s_local"]) == len(out["cell_s_ray"]) == 1
    assert len(out["run_cell_s_ray"]) == 1 and out["same_results"] is True
    assert positive(out["local_s"]) and positive(out["ray_s"]) and positive(out["ratio_local_over_ray"])


def test_xla_flags_smoke(monkeypatch, capsys):
    """Two settings in their own processes (XLA reads its flags at start): both measured, the default's ratio 1."""
    out = run_script("xla_flags.py", ["--smoke", "--algos", "iql", "--settings", "default,rbg_prng"],
                     monkeypatch, capsys)
    assert out["steps"] == 2 and out["rounds"] == 1 and out["settings"]["rbg_prng"] == {
        "JAX_DEFAULT_PRNG_IMPL": "rbg"}
    rows = out["results"]["iql"]
    assert positive(rows["default"]["steps_per_s"]) and positive(rows["rbg_prng"]["steps_per_s"])
    assert rows["default"]["ratio_to_default"] == 1.0 and positive(rows["rbg_prng"]["ratio_to_default"])


def test_profile_step_smoke(monkeypatch, capsys):
    out = run_script("profile_step.py", ["--smoke", "--algos", "iql"], monkeypatch, capsys)
    row = out["results"]["iql"]
    assert out["steps"] == 2 and positive(out["matmul_gflops_256"]) and positive(row["steps_per_s"])
    assert row["ms_per_step_by_kind"]["matmul"] > 0  # the trace was read: the dense layers' dots are in it
    assert positive(row["step_flops"]) and row["flops_source"] == "xla_cost_analysis"


def test_profile_kinds_group_xla_operation_names():
    sys.path.insert(0, str(BENCH))
    try:
        from profile_step import kind_of
    finally:
        sys.path.remove(str(BENCH))
    assert [kind_of(n) for n in ("dot.138", "ynn_fusion.13", "xnn_fusion", "bitcast_gather_fusion.1",
                                 "multiply_add_fusion.44", "wrapped_reduce", "copy.2", "while.277", "end: dot.3",
                                 "custom-call.1")] == [
        "matmul", "matmul", "matmul", "gather", "elementwise", "elementwise", "copy", "control", "matmul", "other"]
