"""The robot check: try a run's candidate checkpoints on the robot for a small budget of episodes, then deploy one.

``offrl check RUN [RUN ...]`` is a resumable propose-and-record loop over the candidate checkpoints (those after
the warm start, :func:`offrl.training.run_dir.warmup_steps`) of one or more runs:

* ``offrl check RUN`` says which checkpoint to try next (and how to load it), or the answer once the check is done;
* ``offrl check RUN --record success`` (``failure``, ``1``, ``0``, or a return with ``--outcome-range LO HI``)
  records the outcome of one episode of the proposed checkpoint (or of ``--checkpoint ID``);
* ``offrl check RUN --env ...`` (or ``--simulate`` for the dataset's MetaWorld task) lets a simulator answer every
  episode, to rehearse the whole loop.

**The trial log** (default ``RUN/check/trials.jsonl``) is the only state: a header line (the runs, their
fingerprint, the candidates, the rule, budget, seed, confidence and outcome range), then one line per episode
(checkpoint, outcome, time, operator, note). It is append-only and never rewritten: each line is written with
one ``write`` and ``fsync``-ed before the command reports it, so a crash or Ctrl-C loses at most the line being
written; a torn line (no newline, or not JSON) is skipped on reading, with a note. Everything else (the next
proposal, the stop, the answer) is recomputed from the log: the random generator of trial n is seeded by
``(seed, n)``, so an interrupted check resumes with exactly the proposals it would have made.

The rules (:mod:`offrl.workflow.allocation`) read only these recorded outcomes and, for ``offline_prior``, the
run's offline metrics (metrics.jsonl and fqe.json); never the analysis-only evaluation.json.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offrl.training import run_dir as rd
from offrl.workflow.allocation import (
    DEFAULT_CONFIDENCE,
    INTERVAL_LEVEL,
    PROB_BEST_SAMPLES,
    RULES,
    Arms,
    make_rule,
    prob_best,
    summarise,
)

CHECK_DIR = "check"
LOG_FILE = "trials.jsonl"
RESULT_FILE = "check.json"
LOG_VERSION = 1
DEFAULT_RULE = "top_two_thompson"  # the pre-registered decision of the replay on dev (docs/results-check.md)
DEFAULT_BUDGET = 50
PRIOR_RULES = ("q_peak_fitted", "q_peak_in_range")  # offline_prior's scores: the first the run has


@dataclass(frozen=True)
class Candidate:
    """A checkpoint the check may propose: its run, step, and the id the user types (``STEP``, or ``RUN:STEP``
    when the check spans several runs)."""

    run: Path
    step: int
    id: str


@dataclass(frozen=True)
class CheckSettings:
    """What a check is: fixed by the log's header once it exists."""

    rule: str = DEFAULT_RULE
    budget: int = DEFAULT_BUDGET
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0
    outcome_range: tuple[float, float] = (0.0, 1.0)


def candidates_of(runs: Sequence[str | Path]) -> list[Candidate]:
    """The candidate checkpoints of the runs, run by run in step order: those after the run's warm start (all
    when none is).

    Raises:
        FileNotFoundError: a run is not a run directory or has no checkpoint.
        ValueError: no run, or the same run twice.
    """
    if not runs:
        raise ValueError("name at least one run directory")
    paths = [Path(r) for r in runs]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("a run is named twice")
    names = [p.resolve().name for p in paths]
    label = names if len(set(names)) == len(names) else [str(p) for p in paths]
    out = []
    for path, name in zip(paths, label, strict=True):
        cfg = rd.load_run_config(path)
        steps = rd.checkpoint_steps(path)
        if not steps:
            raise FileNotFoundError(f"{path} has no checkpoints: train it first")
        warm = rd.warmup_steps(cfg.get("algo", "cql"), cfg.get("agent", {}))
        after = [s for s in steps if s > warm] or steps
        out += [Candidate(path, s, str(s) if len(paths) == 1 else f"{name}:{s}") for s in after]
    return out


def fingerprint(runs: Sequence[str | Path]) -> str:
    """A short hash of the runs' config.json files: a log is refused by a check of other runs."""
    h = hashlib.sha256()
    for r in runs:
        h.update((Path(r) / rd.CONFIG_FILE).read_bytes())
    return h.hexdigest()[:16]


def default_log(runs: Sequence[str | Path]) -> Path:
    """RUN/check/trials.jsonl of the first run."""
    return Path(runs[0]) / CHECK_DIR / LOG_FILE


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def read_log(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
    """The log's header, its trials in order, and notes (torn lines skipped).

    A line that does not parse as a JSON object is skipped and noted: only a crash mid-write makes one (the
    last line without its newline), since every line is written whole. Returns ``(None, [], notes)`` for a
    missing or empty file."""
    path = Path(path)
    if not path.is_file():
        return None, [], []
    header, trials, notes = None, [], []
    raw = path.read_bytes().split(b"\n")
    for i, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            where = "its last line" if i == len(raw) else f"line {i}"
            notes.append(f"note: ignored {where} of {path}, torn by an interrupted write")
            continue
        if rec.get("type") == "header" and header is None:
            header = rec
        elif rec.get("type") == "trial":
            trials.append(rec)
    return header, trials, notes


def _append_line(path: Path, record: dict[str, Any]) -> None:
    # One write of one whole line, then fsync: a crash loses at most this line, which the reader then skips.
    # A torn last line left by an earlier crash gets its newline first, so that this line stays whole.
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Check:
    """A check of the runs' candidates, its state rebuilt from the trial log.

    Args:
        runs: run directories.
        log: the trial log; default RUN/check/trials.jsonl of the first run.
        settings: the check's settings for a new log; None fields are taken from an existing log, and a given
            setting that differs from the log's is an error.

    Raises:
        FileNotFoundError: a run is missing or has no checkpoint.
        ValueError: the log belongs to other runs or other settings, records an unknown checkpoint, or a setting
            is out of range (unknown rule, budget < 1, confidence outside (0, 1), an empty outcome range).
    """

    def __init__(self, runs: Sequence[str | Path], log: str | Path | None = None, rule: str | None = None,
                 budget: int | None = None, confidence: float | None = None, seed: int | None = None,
                 outcome_range: Sequence[float] | None = None):
        self.runs = [Path(r) for r in runs]
        self.candidates = candidates_of(self.runs)
        self.log = Path(log) if log is not None else default_log(self.runs)
        self.fingerprint = fingerprint(self.runs)
        header, self.trials, self.notes = read_log(self.log)
        given = {"rule": rule, "budget": budget, "confidence": confidence, "seed": seed,
                 "outcome_range": None if outcome_range is None else [float(x) for x in outcome_range]}
        if header is not None:
            if header.get("fingerprint") != self.fingerprint:
                raise ValueError(f"{self.log} is the trial log of another check ({', '.join(header.get('runs', []))}"
                                 f"): pass --log with a new file for these runs")
            for key, value in given.items():
                if value is not None and value != header[key]:
                    raise ValueError(f"{self.log} was started with --{key.replace('_', '-')} {header[key]}, not "
                                     f"{value}: leave it out, or start a new check with --log")
            self.settings = CheckSettings(header["rule"], int(header["budget"]), float(header["confidence"]),
                                          int(header["seed"]), tuple(header["outcome_range"]))
        else:
            d = CheckSettings()
            self.settings = CheckSettings(
                rule or d.rule, int(budget if budget is not None else d.budget),
                float(confidence if confidence is not None else d.confidence), int(seed if seed is not None else 0),
                tuple(given["outcome_range"] or d.outcome_range))
        s = self.settings
        if s.rule not in RULES:
            raise ValueError(f"unknown allocation rule {s.rule!r}: choose one of {', '.join(RULES)}")
        if s.budget < 1:
            raise ValueError(f"--budget must be at least 1 episode, not {s.budget}")
        if not 0 < s.confidence < 1:
            raise ValueError(f"--confidence must lie in (0, 1), not {s.confidence}")
        if len(s.outcome_range) != 2 or not s.outcome_range[0] < s.outcome_range[1]:
            raise ValueError(f"--outcome-range must be LOW HIGH with LOW < HIGH, not {list(s.outcome_range)}")
        self._index = {c.id: i for i, c in enumerate(self.candidates)}
        for t in self.trials:
            if t.get("checkpoint") not in self._index:
                raise ValueError(f"{self.log} records checkpoint {t.get('checkpoint')!r}, which is not a candidate "
                                 f"of these runs: pass --log with a new file")
        self.rule = make_rule(s.rule, s.budget, prior_scores=self._prior_scores(),
                              positions=np.arange(len(self.candidates)))

    def _prior_scores(self) -> np.ndarray | None:
        # offline_prior's prior: an offline rule's scores over each run's candidates (offline metrics only).
        if self.settings.rule != "offline_prior":
            return None
        from offrl.workflow.rules import rule_scores

        scores = []
        for run in self.runs:
            cfg = rd.load_run_config(run)
            steps = [c.step for c in self.candidates if c.run == run]
            by_step = {int(r["step"]): r for r in rd.with_scores(run, rd.read_metrics(run)) if "step" in r}
            records = [by_step.get(s, {"step": s}) for s in steps]
            found = None
            rules = rule_scores(records, cfg["dataset"].get("q_range") or [0.0, 1.0])
            for name in PRIOR_RULES:
                sc = rules[name][1]
                if sc is not None and np.isfinite(sc).any():
                    found = np.asarray(sc, float)
                    break
            # Ranks are comparable across runs; raw scores of several runs are not, so each run is ranked alone.
            from offrl.workflow.allocation import rank_scores

            scores.append(rank_scores(found, len(steps)) if found is not None else np.zeros(len(steps)))
        return np.concatenate(scores) if any(np.any(s != 0) for s in scores) else None

    # -- state -----------------------------------------------------------------------------------------------
    def arms(self) -> Arms:
        """The recorded outcomes as the allocation rules' state (one check)."""
        return Arms.from_trials(len(self.candidates), [self._index[t["checkpoint"]] for t in self.trials],
                                [float(t["value"]) for t in self.trials])

    def _rng(self, purpose: int) -> np.random.Generator:
        # Derived from the seed and the number of recorded trials only: a resumed check draws the same numbers.
        return np.random.default_rng([self.settings.seed, len(self.trials), purpose])

    def prob_best_now(self) -> float:
        """P(the arm the check would deploy now is the best), from the recorded trials; 0 before any."""
        if not self.trials:
            return 0.0
        arms = self.arms()
        arm = self.rule.recommend(arms, self._rng(2))
        return float(prob_best(arms, self._rng(3), PROB_BEST_SAMPLES)[0, arm[0]])

    def status(self) -> str:
        """``"budget"`` (spent), ``"confident"`` (P(best) >= confidence: early stop) or ``"running"``."""
        if len(self.trials) >= self.settings.budget:
            return "budget"
        if self.trials and self.prob_best_now() >= self.settings.confidence:
            return "confident"
        return "running"

    def propose(self) -> Candidate:
        """The checkpoint to try next (the same after any restart: it depends on the log only)."""
        return self.candidates[int(self.rule.propose(self.arms(), self._rng(1))[0])]

    # -- recording -------------------------------------------------------------------------------------------
    def parse_outcome(self, text: str | float) -> tuple[float, float]:
        """``(outcome as given, value in [0, 1])``: ``success``/``failure``, or a number in the outcome range.

        Raises:
            ValueError: not a number, or outside the outcome range."""
        lo, hi = self.settings.outcome_range
        word = str(text).strip().lower()
        if word in ("success", "succeeded", "s", "yes", "true"):
            x = hi
        elif word in ("failure", "failed", "f", "no", "false"):
            x = lo
        else:
            try:
                x = float(word)
            except ValueError:
                raise ValueError(f"outcome {text!r} is neither success, failure nor a number") from None
        if not (np.isfinite(x) and lo <= x <= hi):
            raise ValueError(f"outcome {text} is outside the outcome range [{lo:g}, {hi:g}] (--outcome-range)")
        return float(x), float((x - lo) / (hi - lo))

    def candidate(self, checkpoint: str | int | None) -> Candidate:
        """The candidate named ``checkpoint`` (``STEP`` or ``RUN:STEP``); None: the proposed one.

        Raises:
            ValueError: no candidate has that id."""
        if checkpoint is None:
            return self.propose()
        key = str(checkpoint)
        if key not in self._index:
            ids = [c.id for c in self.candidates]
            raise ValueError(f"checkpoint {key} is not a candidate of this check (candidates: {', '.join(ids)})")
        return self.candidates[self._index[key]]

    def record(self, outcome: str | float, checkpoint: str | int | None = None, operator: str | None = None,
               note: str | None = None) -> dict[str, Any]:
        """Append one episode's outcome to the log (creating it with its header first) and return the line.

        Everything is checked before anything is written: a refused outcome leaves the log as it was.

        Raises:
            ValueError: an unknown checkpoint, an outcome out of range, or the budget already spent."""
        cand = self.candidate(checkpoint)
        raw, value = self.parse_outcome(outcome)
        if len(self.trials) >= self.settings.budget:
            raise ValueError(f"the budget of {self.settings.budget} episodes is spent: see the answer with "
                             f"`offrl check {' '.join(map(str, self.runs))}`, or start a new check with --log")
        self.start()
        rec = {"type": "trial", "n": len(self.trials) + 1, "checkpoint": cand.id, "run": str(cand.run),
               "step": cand.step, "outcome": raw, "value": value, "time": _now(), "operator": operator,
               "note": note}
        _append_line(self.log, rec)
        self.trials.append(rec)
        return rec

    def start(self) -> None:
        """Create the log with its header line (the check's settings) if it does not exist yet."""
        if self.log.exists() and self.log.stat().st_size > 0:
            return
        s = self.settings
        header = {"type": "header", "version": LOG_VERSION, "runs": [str(r) for r in self.runs],
                  "fingerprint": self.fingerprint, "candidates": [c.id for c in self.candidates], "rule": s.rule,
                  "budget": s.budget, "confidence": s.confidence, "seed": s.seed,
                  "outcome_range": list(s.outcome_range), "created": _now()}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # The header alone, written atomically: the file exists whole or not at all.
        rd.atomic_write_text(self.log, json.dumps(header, separators=(",", ":")) + "\n")

    # -- the answer ------------------------------------------------------------------------------------------
    def answer(self) -> dict[str, Any]:
        """The checkpoint to deploy and how good it is (check.json's content).

        Returns:
            ``{"deploy": {"checkpoint", "run", "step"}, "estimate", "interval", "interval_level", "prob_best",
            "raw_mean", "trials_of_deployed", "episodes_used", "budget", "status", "rule", "confidence",
            "per_checkpoint", "correction", "outcome_range"}``; success values are in [0, 1] (the outcome range's
            units in ``*_outcome_units`` when it is not [0, 1]).
        """
        arms = self.arms()
        arm = self.rule.recommend(arms, self._rng(2))
        sm = summarise(arms, arm, self._rng(4), level=INTERVAL_LEVEL, samples=PROB_BEST_SAMPLES)
        cand = self.candidates[int(arm[0])]
        lo, hi = self.settings.outcome_range
        out: dict[str, Any] = {
            "deploy": {"checkpoint": cand.id, "run": str(cand.run), "step": cand.step},
            "estimate": float(sm["estimate"][0]),
            "interval": [float(sm["low"][0]), float(sm["high"][0])],
            "interval_level": INTERVAL_LEVEL,
            "prob_best": float(sm["prob_best"][0]),
            "raw_mean": None if not np.isfinite(sm["raw_mean"][0]) else float(sm["raw_mean"][0]),
            "trials_of_deployed": int(sm["trials"][0]),
            "episodes_used": len(self.trials),
            "budget": self.settings.budget,
            "status": self.status(),
            "rule": self.settings.rule,
            "confidence": self.settings.confidence,
            "outcome_range": [lo, hi],
            "correction": "estimate and interval: posterior of a hierarchical Beta-Bernoulli model fitted across the "
                          "checkpoints (shrunk toward them: the winner's-curse correction); docs/selection.md",
            "per_checkpoint": [{"checkpoint": c.id, "trials": int(arms.counts[0, i]),
                                "mean": float(arms.sums[0, i] / arms.counts[0, i]) if arms.counts[0, i] else None}
                               for i, c in enumerate(self.candidates)],
            "log": str(self.log),
        }
        if (lo, hi) != (0.0, 1.0):
            out["estimate_outcome_units"] = lo + out["estimate"] * (hi - lo)
            out["interval_outcome_units"] = [lo + x * (hi - lo) for x in out["interval"]]
        return out

    def write_answer(self) -> tuple[Path, dict[str, Any]]:
        """Write the answer to check.json beside the log (atomically) and return its path and content."""
        ans = self.answer()
        path = self.log.parent / RESULT_FILE
        rd.write_json(path, ans)
        return path, ans


def format_answer(ans: dict[str, Any]) -> str:
    """The answer in a few lines for the terminal."""
    lo, hi = ans["interval"]
    why = {"budget": "the budget is spent", "confident": f"P(best) reached {ans['confidence']:g}",
           "running": "the check is not finished"}[ans["status"]]
    tried = ", ".join(f"{p['checkpoint']}: {p['mean']:.2f} ({p['trials']})" for p in ans["per_checkpoint"]
                      if p["trials"])
    raw = "-" if ans["raw_mean"] is None else f"{ans['raw_mean']:.2f}"
    return (f"deploy checkpoint {ans['deploy']['checkpoint']} of {ans['deploy']['run']} ({why}; "
            f"{ans['episodes_used']} of {ans['budget']} episodes, rule {ans['rule']})\n"
            f"  success estimate {ans['estimate']:.2f}, {ans['interval_level']:.0%} interval [{lo:.2f}, {hi:.2f}] "
            f"(winner's-curse corrected; raw mean {raw} over {ans['trials_of_deployed']}), "
            f"P(best of those tried) {ans['prob_best']:.2f}\n"
            f"  tried (mean, episodes): {tried or 'none'}")


def next_hint(check: Check, cand: Candidate) -> str:
    """What to tell the user about the next checkpoint to try."""
    n = len(check.trials) + 1
    runs = " ".join(map(str, check.runs))
    return (f"try checkpoint {cand.id} (episode {n} of at most {check.settings.budget}, rule "
            f"{check.settings.rule})\n"
            f"  load it: offrl export {cand.run} --step {cand.step} --out {cand.run}/policy-{cand.step}, then "
            f"offrl.load_policy('{cand.run}/policy-{cand.step}')\n"
            f"  then record the episode: offrl check {runs} --record success|failure (or a number)")


def simulator(check: Check, env: str | None, success_key: str = "success", horizon: int | None = None
              ) -> Callable[[Candidate, int], float]:
    """An answerer that rolls out one episode of a candidate in a simulator: the dataset's MetaWorld task (``env``
    None) or a gymnasium environment (``env``: an id or ``module:factory``), as ``offrl evaluate`` does. Episode
    n gets its own start state (seed ``seed * 1,000,003 + n``). Returns ``answer(candidate, n) -> 0.0 or 1.0``.

    Raises:
        ValueError: the run's dataset names no MetaWorld task (without ``env``) or the outcome range is not [0, 1].
    """
    if tuple(check.settings.outcome_range) != (0.0, 1.0):
        raise ValueError("a simulator answers success or failure: leave --outcome-range out with --env/--simulate")
    from offrl.training.policy import checkpoint_policy

    cache: dict[tuple[Path, int], Any] = {}

    def policy(c: Candidate) -> Any:
        if (c.run, c.step) not in cache:
            cache[(c.run, c.step)] = checkpoint_policy(c.run, c.step)
        return cache[(c.run, c.step)]

    def episode_seed(n: int) -> int:
        return check.settings.seed * 1_000_003 + n

    if env is not None:
        from offrl.envs.gym import evaluate_gym

        def answer_gym(c: Candidate, n: int) -> float:
            cfg = rd.load_run_config(c.run)
            meta = cfg["dataset"].get("metadata", {})
            res = evaluate_gym(policy(c), env, 1, seed=episode_seed(n), success_key=success_key,
                               horizon=horizon or meta.get("horizon"), num_envs=1,
                               terminate_on_success=bool(meta.get("terminate_on_success", True)),
                               obs_dim=int(cfg["dataset"]["obs_dim"]), act_dim=int(cfg["dataset"]["act_dim"]))
            return float(res["successes"])

        return answer_gym
    from offrl.envs import DEFAULT_HORIZON, evaluate_policy

    def answer_mw(c: Candidate, n: int) -> float:
        meta = rd.load_run_config(c.run)["dataset"].get("metadata", {})
        task = meta.get("task")
        if not task:
            raise ValueError(f"{c.run}'s dataset names no MetaWorld task: pass --env with your simulator")
        res = evaluate_policy(policy(c), task, 1, horizon=int(horizon or meta.get("horizon") or DEFAULT_HORIZON),
                              seed=episode_seed(n), terminate_on_success=bool(meta.get("terminate_on_success", True)),
                              num_envs=1)
        return float(res["successes"])

    return answer_mw


def run_simulated(check: Check, answer: Callable[[Candidate, int], float], progress: bool = True) -> None:
    """Let ``answer`` play every episode until the check stops (budget spent or P(best) >= confidence); each
    outcome is recorded (operator ``simulator``) before the next is asked for, so an interrupted rehearsal
    resumes where it stopped."""
    while check.status() == "running":
        cand = check.propose()
        outcome = answer(cand, len(check.trials))
        check.record(outcome, cand.id, operator="simulator")
        if progress:
            print(f"  episode {len(check.trials)}: checkpoint {cand.id}: "
                  f"{'success' if outcome >= 1 else 'failure' if outcome <= 0 else outcome}", flush=True)
