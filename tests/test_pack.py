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
