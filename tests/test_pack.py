"""Archives of run directories packed into one file (offrl.study.pack): lossless, refusing what is not a record."""

from __future__ import annotations

import json

import pytest

from offrl.study import pack


def _run(folder, name, step=10):
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "iql", "seed": 1}, indent=1) + "\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": step, "q_data": -0.5}) + "\n")
    return run


def test_pack_and_unpack_round_trip_byte_for_byte(tmp_path):
    archive = tmp_path / "archive"
    a, b = _run(archive, "D1_s0"), _run(archive, "runs/D1_s0_bc", step=20)
    (archive / "D1_s0.log").write_text("training ... done\n")
    texts = {f.relative_to(archive): f.read_text() for f in archive.rglob("*") if f.is_file() and f.suffix != ".log"}
    path, n_runs, n_logs = pack.pack_runs(archive)
    assert (n_runs, n_logs) == (2, 1) and not a.exists() and not b.exists() and not (archive / "D1_s0.log").exists()
    assert sorted(p.name for p in archive.iterdir() if p.is_file()) == ["logs.jsonl", "runs.jsonl"]
    assert dict(pack.iter_packed_logs(archive)) == {"D1_s0.log": "training ... done\n"}
    out = tmp_path / "out"
    assert len(pack.unpack_runs(archive, out)) == 2
    assert {f.relative_to(out): f.read_text() for f in out.rglob("*") if f.is_file()} == texts
    with pytest.raises(FileExistsError):  # never overwrites a run directory
        pack.unpack_runs(archive, out, ("D1_s0",))
    with pytest.raises(KeyError, match="D9"):
        pack.unpack_runs(archive, tmp_path / "other", ("D9",))
    _run(archive, "D1_s0")  # the same name again: refused, nothing written
    before = (archive / "runs.jsonl").read_text()
    with pytest.raises(FileExistsError, match="D1_s0"):
        pack.pack_runs(archive)
    assert (archive / "runs.jsonl").read_text() == before and (archive / "D1_s0").is_dir()


def test_pack_refuses_checkpoints_and_binaries(tmp_path, capsys):
    archive = tmp_path / "archive"
    run = _run(archive, "r")
    (run / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(ValueError, match="records only"):
        pack.pack_runs(archive)
    (run / "checkpoints" / "10").rmdir()
    (run / "checkpoints").rmdir()
    (run / "weights.bin").write_bytes(b"\xff\xfe\x00\x81")
    assert pack.main(["pack", str(archive)]) == 1
    assert "not text" in capsys.readouterr().err and not (archive / "runs.jsonl").exists() and run.is_dir()


# ------------------------------------------------------------------------------------------------ cell files


def _cells(archive, names):
    """Loose cell files as the study writes them (offrl.training.run_dir.write_json), record key order not sorted."""
    from offrl.training import run_dir as rd

    archive.mkdir(parents=True, exist_ok=True)
    recs = {}
    for i, name in enumerate(names):
        recs[name] = {"cell": {"task": "reach-v3", "seed": i}, "algo": "cql", "checkpoints": [
            {"step": 10, "q_data": 0.1 * i, "success_rate": 0.25, "episode_successes": [0, 1, 0, 0]}],
            "agent": {"z": 1, "a": 2}}
        rd.write_json(archive / f"{name}.json", recs[name])
    return recs


def test_pack_and_unpack_cells_round_trip(tmp_path):
    archive = tmp_path / "archive"
    recs = _cells(archive, ["b__s1", "a__s0", "a-x__s0"])
    texts = {f.name: f.read_text() for f in archive.iterdir()}
    path, n = pack.pack_cells(archive)
    assert n == 3 and sorted(p.name for p in archive.iterdir()) == ["cells.jsonl"]
    lines = path.read_text().splitlines()
    # One line per cell, in the order of the file names (as the archive's readers listed them), keys of the line
    # sorted; the record's own key order is kept.
    assert [json.loads(line)["name"] for line in lines] == [f[:-5] for f in sorted(f"{n}.json" for n in recs)]
    assert all(line.startswith('{"cell": {"cell": ') for line in lines)
    got = dict(pack.iter_archived_cells(archive))
    assert got == recs and list(got["b__s1"]["agent"]) == ["z", "a"]
    out = tmp_path / "out"
    assert len(pack.unpack_cells(archive, out)) == 3
    assert {f.name: f.read_text() for f in out.iterdir()} == texts  # as the study wrote them, byte for byte
    assert {f.name: json.loads(f.read_text()) for f in out.iterdir()} == {f"{k}.json": v for k, v in recs.items()}
    with pytest.raises(FileExistsError):  # never overwrites a cell file
        pack.unpack_cells(archive, out, ("a__s0",))
    with pytest.raises(KeyError, match="c__s9"):
        pack.unpack_cells(archive, tmp_path / "other", ("c__s9",))
    # A second pack appends.
    more = _cells(archive, ["c__s2"])
    assert pack.pack_cells(archive)[1] == 1 and dict(pack.iter_archived_cells(archive)) == {**recs, **more}


def test_packing_a_cell_twice_is_refused_and_writes_nothing(tmp_path):
    archive = tmp_path / "archive"
    _cells(archive, ["a__s0", "b__s0"])
    pack.pack_cells(archive)
    before = (archive / "cells.jsonl").read_text()
    _cells(archive, ["c__s0", "b__s0"])  # b again (another record), c new
    with pytest.raises(FileExistsError, match="b__s0"):
        pack.pack_cells(archive)
    assert (archive / "cells.jsonl").read_text() == before
    assert (archive / "b__s0.json").is_file() and (archive / "c__s0.json").is_file()
    # ... and the CLI says so in one line, writing nothing either.
    assert pack.main(["pack", str(archive)]) == 1
    assert (archive / "cells.jsonl").read_text() == before and (archive / "c__s0.json").is_file()
    # A file that is not a cell record is refused too.
    (archive / "b__s0.json").unlink()
    (archive / "notes.json").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="notes.json"):
        pack.pack_cells(archive)
    assert (archive / "cells.jsonl").read_text() == before


def test_a_loose_cell_beside_the_pack_is_read_too(tmp_path):
    archive = tmp_path / "archive"
    recs = _cells(archive, ["a__s0", "b__s0"])
    pack.pack_cells(archive)
    recs |= _cells(archive, ["c__s0"])  # a study still running writes beside the pack
    assert [n for n, _ in pack.iter_archived_cells(archive)] == ["a__s0", "b__s0", "c__s0"]
    assert dict(pack.iter_archived_cells(archive)) == recs
    assert pack.archived_cell(archive, "c__s0") == recs["c__s0"] and pack.archived_cell(archive, "a__s0") == recs[
        "a__s0"] and pack.archived_cell(archive, "d__s0") is None
    # A loose copy equal to its packed one (pack_cells between its write and its removal) is read once; a different
    # one is an error, never a silent pick.
    pack.unpack_cells(archive, archive, ("a__s0",))
    assert [n for n, _ in pack.iter_archived_cells(archive)] == ["a__s0", "b__s0", "c__s0"]
    (archive / "a__s0.json").write_text(json.dumps({**recs["a__s0"], "algo": "iql"}))
    with pytest.raises(ValueError, match="differs"):
        list(pack.iter_archived_cells(archive))
    with pytest.raises(ValueError, match="differs"):
        pack.archived_cell(archive, "a__s0")
    # The CLI packs what the folder holds (the loose cell) and unpacks cells and runs alike.
    (archive / "a__s0.json").unlink()
    assert pack.main(["pack", str(archive)]) == 0
    assert sorted(p.name for p in archive.iterdir()) == ["cells.jsonl"]
    assert pack.main(["unpack", str(archive), str(tmp_path / "out"), "c__s0"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c__s0.json"]
    assert pack.main(["unpack", str(archive), str(tmp_path / "out2")]) == 0
    assert dict(pack.iter_archived_cells(tmp_path / "out2")) == recs


def test_packed_cells_are_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    _cells(archive, ["a__s0", "b__s0"])
    pack.pack_cells(archive)
    reads = []
    real = pack.Path.read_text

    def counting(self, *a, **kw):
        reads.append(self.name)
        return real(self, *a, **kw)

    monkeypatch.setattr(pack.Path, "read_text", counting)
    for _ in range(5):
        assert pack.archived_cell(archive, "a__s0")["cell"]["seed"] == 0
    assert reads.count("cells.jsonl") <= 1
    monkeypatch.undo()
    more = _cells(archive, ["c__s0"])
    pack.pack_cells(archive)  # rewritten: read again
    assert pack.archived_cell(archive, "c__s0") == more["c__s0"]


def test_the_study_finds_packed_cells_and_refuses_other_settings(tmp_path):
    from offrl.study import store
    from offrl.study.config import StudyConfigError, cells_of, study_config_from_dict
    from offrl.training import run_dir as rd

    def raw(out, **kw):
        return {"out": str(tmp_path / out), "archive": str(tmp_path / "archive"), "bootstrap_samples": 50,
                "eval_episodes": 4, "scenario": [{"name": "a", "tasks": ["reach-v3", "push-v3"], "episodes": [5]}],
                **kw}

    first = study_config_from_dict(raw("machine1"))
    done, todo = cells_of(first)
    res = {"cell": {"task": "reach-v3"}, "checkpoints": [{"step": 10, "success_rate": 0.5}]}
    (first.out / "cells" / done.name).mkdir(parents=True)
    rd.write_json(first.out / "cells" / done.name / store.CELL_FILE, res)
    assert store.archive_cells(first) == 1
    assert pack.pack_cells(tmp_path / "archive")[1] == 1 and not store.archive_file(first, done).exists()

    # Packed, the cell is not archived again as a loose copy ...
    assert store.archive_cells(first) == 0 and not store.archive_file(first, done).exists()
    # ... and another study directory finds it, under the same settings only.
    second = study_config_from_dict(raw("machine2"))
    assert store.finished_cell(second, done)["checkpoints"] == res["checkpoints"]
    assert store.finished_cell(second, todo) is None
    other = study_config_from_dict(raw("machine3", eval_episodes=8))
    with pytest.raises(StudyConfigError, match="eval_episodes"):
        store.finished_cell(other, done)
    # A loose copy that contradicts the packed one stops the study (never a silent pick).
    rd.write_json(store.archive_file(second, done), {**res, "checkpoints": []})
    with pytest.raises(StudyConfigError, match="differs"):
        store.finished_cell(second, done)


def test_the_archive_readers_read_packed_and_loose_cells_alike(tmp_path):
    from offrl.training import run_dir as rd
    from offrl.workflow import check_replay, trust

    archive = tmp_path / "dev"
    archive.mkdir()
    for seed in range(3):
        cps = [{"step": s, "q_data": 0.1 * k, "success_rate": 0.25 * k, "episode_successes": [1] * k + [0] * (4 - k)}
               for k, s in enumerate((10, 20, 30))]
        rd.write_json(archive / f"reach-v3__s{seed}.json", {"cell": {"task": "reach-v3", "seed": seed}, "algo": "cql",
                                                            "q_range": [0.0, 1.0], "checkpoints": cps})
    loose = (trust._cells(archive), check_replay.load_archive(archive))
    assert len(loose[0]) == 3 and len(loose[1]) == 3
    pack.pack_cells(archive)
    assert (trust._cells(archive), check_replay.load_archive(archive)) == loose
    rd.write_json(archive / "push-v3__s0.json", {**loose[0][0], "cell": {"task": "push-v3", "seed": 0}})
    assert len(trust._cells(archive)) == len(check_replay.load_archive(archive)) == 4
