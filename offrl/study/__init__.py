"""`offrl study CONFIG`: does the workflow pick good policies? The validation study of the paper's Sec. 5.

A study is a grid of scenarios x tasks x dataset sizes x seeds x settings. Every cell is an ordinary run
(collect if needed, train, diagnose), and then, *for analysis only*, every checkpoint is rolled out in the
simulator. Offline, each checkpoint selector picks one checkpoint; the analysis compares that pick with the real
success of every checkpoint (:mod:`offrl.study.selectors`).

The grid is resumable: a cell that has its ``cell.json`` is done and skipped; a cell whose run stopped part way
resumes its training (``--resume``), and reuses its evaluation.json / fqe.json when they cover the run's
checkpoints. Datasets are shared between the cells that need the same (task, regime, episodes, seed).

Several processes may work on one study at once (``offrl study --workers N``): each cell and each dataset is
taken under an exclusive ``fcntl`` lock (released by the kernel when a process dies, so a killed worker leaves
no stale lock), and a process skips the cells another one holds. On 2 CPU cores two single-threaded workers make
1.19x the gradient steps per second of one process on both cores (47.0 against 39.6, benchmarks/workers_speed.py
on an idle machine), and no core idles while the other steps the simulator.

On a Ray cluster (``offrl study CONFIG --ray ADDRESS``, :mod:`offrl.cluster`, docs/cluster.md) every cell is a
Ray task that runs :func:`offrl.study.cell.run_cell` under the same lock; the head analyses as here.

Layout of a study directory::

    STUDY/study.toml         the configuration (copied; a different one is refused)
    STUDY/data/*.h5          datasets
    STUDY/cells/<cell>/      one run directory per cell (config.json, metrics.jsonl, checkpoints/, ...)
                             plus evaluation.json, fqe.json, cell.json
    STUDY/locks/             one lock file per cell and dataset (empty; held only while a process works on it)
    STUDY/failed/<cell>.txt  why a cell could not run (listed in the results; retried on the next call)
    STUDY/ray/<cell>.json    with --ray: the cell's last attempt (node, pid, step it resumed from); .log: its output
    STUDY/analysis.json      every number in the results
    RESULTS (default STUDY/results.md) and STUDY/figures/*.png
    ARCHIVE/<cell>.json      with ``archive = "DIR"``: a copy of every finished cell.json, meant to be committed
    ARCHIVE/cells.jsonl      archived cells packed into one file, one line each (``python -m offrl.study.pack
                             pack ARCHIVE``); a study still running adds loose <cell>.json files beside it

The archive is what lets a grid longer than one machine's life accumulate: the study directory (datasets,
checkpoints) is scratch, while the archive holds everything the analysis reads. A cell found in the archive,
loose or packed (:func:`offrl.study.pack.iter_archived_cells` reads both), counts as done, with or without its run
directory; an archived cell made under other settings (steps, checkpoints, evaluation episodes, FQE steps,
horizon, noise, the setting's overrides) is refused, never mixed in.

The package, each module depending only on those listed before it:

- :mod:`offrl.study.config`: the grid and its cells, read from TOML and checked (no other study module);
- :mod:`offrl.study.pack`: archives packed into one file per folder, and their one reader (no other study
  module);
- :mod:`offrl.study.store`: what the study directory and the archive hold, and the locks;
- :mod:`offrl.study.cell`: one cell (collect, train, diagnose, evaluate, FQE);
- :mod:`offrl.study.selectors`: the checkpoint selectors and the analysis of finished cells;
- :mod:`offrl.study.results`: the results page and its figures;
- :mod:`offrl.study.run`: the grid, locally (one or several processes) or on Ray (:mod:`offrl.cluster`).

``offrl select`` is not a study selector: it runs the workflow's diagnosis (:mod:`offrl.workflow.diagnosis`),
whose pick is the study's ``workflow`` selector.
"""
