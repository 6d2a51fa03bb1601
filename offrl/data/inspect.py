"""A quick look at a dataset before training on it: sizes, returns, success, action and observation ranges.

:func:`inspect_dataset` computes the numbers and flags likely problems; :func:`format_inspection` prints them.
Validation (:func:`offrl.data.dataset.make_dataset`) has already ruled out NaN/inf, bad flags and missing
episode boundaries, so the checks here are about whether the data can teach anything, not whether it is
well formed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from offrl.data.dataset import Dataset

# An action component within this distance (action units) of a bound counts as at the bound.
BOUND_TOL = 1e-3
# Flag the data when more than this fraction of steps has some action component at a bound.
BOUND_FRACTION_LIMIT = 0.2
# An observation feature with a smaller standard deviation is constant.
CONSTANT_STD = 1e-8
# At most this many observation features are listed one per line by format_inspection.
_MAX_FEATURE_ROWS = 32


def inspect_dataset(ds: Dataset) -> dict[str, Any]:
    """Summarise a dataset and flag likely problems.

    A successful episode is one with a positive reward on some step. Action bounds are the declared ones
    (``metadata["action_low"/"action_high"]``) when present, else the observed per-dimension min/max; in the
    observed case a dimension that never varies is reported as constant rather than as at its bounds.

    Args:
        ds: a validated dataset.

    Returns:
        A JSON-friendly dict (Python floats, ints, lists):

        - ``transitions``, ``episodes``, ``terminals``, ``timeouts`` (counts);
        - ``episode_length``: ``min``/``mean``/``max`` (steps);
        - ``returns``: undiscounted episode return ``min``/``mean``/``max`` (reward units);
        - ``successes``: ``episodes`` (successful count), ``behaviour_success_rate`` (fraction),
          ``positive_reward_steps`` (count);
        - ``rewards``: ``min``/``max``/``mean`` per step, ``all_zero`` (bool);
        - ``actions``: ``dim``, ``min``/``max`` (per dimension), ``low``/``high`` (the bounds used),
          ``bounds`` (``"declared"`` or ``"observed"``), ``at_bound_fraction`` (per dimension, fraction of
          steps), ``steps_at_bound_fraction`` (fraction of steps with any dimension at a bound),
          ``constant_dims`` (indices);
        - ``observations``: ``dim``, per-feature ``min``/``max``/``std`` lists, ``constant_features``
          (indices with std < 1e-8), ``std_min``/``std_max`` (over features);
        - ``metadata_keys``: sorted metadata keys;
        - ``problems``: one line per likely problem (empty when nothing looks wrong).
    """
    n = len(ds)
    slices = ds.episode_slices()
    lengths = np.array([s.stop - s.start for s in slices])
    returns = ds.episode_returns()
    successful = np.array([bool((ds.rewards[s] > 0).any()) for s in slices])

    acts = ds.actions.astype(np.float64)
    a_min, a_max = acts.min(axis=0), acts.max(axis=0)
    declared = ds.metadata.get("action_low") is not None and ds.metadata.get("action_high") is not None
    if declared:
        low = np.asarray(ds.metadata["action_low"], np.float64)
        high = np.asarray(ds.metadata["action_high"], np.float64)
        constant_dims = np.array([], np.int64)
    else:
        low, high = a_min, a_max
        # With observed bounds a dimension that never varies sits "at its bound" on every step; that is a
        # constant action, reported as such, not saturation.
        constant_dims = np.flatnonzero(a_max - a_min < BOUND_TOL)
    at_bound = (np.abs(acts - low) <= BOUND_TOL) | (np.abs(acts - high) <= BOUND_TOL)
    at_bound[:, constant_dims] = False
    per_dim_at_bound = at_bound.mean(axis=0)
    steps_at_bound = float(at_bound.any(axis=1).mean())

    obs = ds.observations.astype(np.float64)
    o_std = obs.std(axis=0)
    constant = np.flatnonzero(o_std < CONSTANT_STD)

    problems: list[str] = []
    # Facts worth knowing that need no fix: saturated controllers and padding features are normal in robot logs
    # (MetaWorld pads its object slots with zeros; its scripted experts command full speed).
    notes: list[str] = []
    if ds.has_images:
        sample = ds.images[:: max(1, ds.images.shape[0] // 1000)]
        if float(sample.std()) < 1.0:
            problems.append(
                f"the camera images are (nearly) constant (pixel std {float(sample.std()):.2f} over "
                f"{len(sample)} sampled frames): rendering likely failed or the camera sees nothing; re-collect "
                f"with another --camera, or check MUJOCO_GL"
            )
    if constant.size == ds.obs_dim:
        problems.append("every observation feature is constant: the observations carry no information; check "
                        "the logging")
    elif constant.size:
        notes.append(
            f"{constant.size} of {ds.obs_dim} observation features are constant (std < {CONSTANT_STD:g}): "
            f"indices {_short_list(constant)}; they carry no information (padding?) and do no harm"
        )
    if ds.num_actions is not None:
        pass  # discrete actions: their range is num_actions, checked when the dataset is loaded
    elif not declared:
        notes.append("no action bounds are declared (metadata action_low/action_high): saturation is not "
                     "checked; declare them when importing if the robot clips its commands")
    elif steps_at_bound > BOUND_FRACTION_LIMIT:
        worst = np.argsort(-per_dim_at_bound)[: min(3, ds.act_dim)]
        worst_txt = ", ".join(f"dim {j}: {per_dim_at_bound[j]:.0%}" for j in worst)
        notes.append(
            f"{steps_at_bound:.1%} of steps have an action at its declared bound ({worst_txt}): the behaviour "
            "saturates (common for scripted or velocity-limited controllers); the tanh policy represents it"
        )
    if constant_dims.size:
        problems.append(
            f"action dimensions {_short_list(constant_dims)} never vary: the data says nothing about "
            "their effect"
        )
    if not (ds.rewards != 0).any():
        problems.append(
            "all rewards are zero: there is nothing to learn; relabel the rewards (success_key or reward_fn "
            "when importing)"
        )
    elif not successful.any():
        problems.append(
            "no episode has a positive reward (no successes): the behaviour policy never solved the task, "
            "so offline RL has no success to learn from"
        )
    if not ds.terminals.any():
        problems.append(
            "terminals are never set: every episode ends by timeout; if success ends the task, mark it "
            "(terminate_on_success when importing) so Q-values do not bootstrap past it"
        )
    ones = np.flatnonzero(lengths == 1)
    if ones.size:
        problems.append(
            f"{ones.size} episode(s) have length 1 (episode indices {_short_list(ones)}): check the episode "
            "boundaries (terminals/timeouts)"
        )

    return {
        "transitions": n,
        "episodes": int(len(slices)),
        "terminals": int(ds.terminals.sum()),
        "timeouts": int(ds.timeouts.sum()),
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "returns": {"min": float(returns.min()), "mean": float(returns.mean()), "max": float(returns.max())},
        "successes": {
            "episodes": int(successful.sum()),
            "behaviour_success_rate": float(successful.mean()),
            "positive_reward_steps": int((ds.rewards > 0).sum()),
        },
        "rewards": {
            "min": float(ds.rewards.min()),
            "max": float(ds.rewards.max()),
            "mean": float(ds.rewards.mean(dtype=np.float64)),
            "all_zero": bool(not (ds.rewards != 0).any()),
        },
        "actions": {
            "dim": ds.act_dim,
            "min": a_min.tolist(),
            "max": a_max.tolist(),
            "low": low.tolist(),
            "high": high.tolist(),
            "bounds": "declared" if declared else "observed",
            "at_bound_fraction": per_dim_at_bound.tolist(),
            "steps_at_bound_fraction": steps_at_bound,
            "constant_dims": constant_dims.tolist(),
        },
        "observations": {
            "dim": ds.obs_dim,
            "min": obs.min(axis=0).tolist(),
            "max": obs.max(axis=0).tolist(),
            "std": o_std.tolist(),
            "std_min": float(o_std.min()),
            "std_max": float(o_std.max()),
            "constant_features": constant.tolist(),
        },
        "images": None if not ds.has_images else {
            "frames": int(ds.images.shape[0]),
            "shape": list(ds.image_shape),
            "bytes": int(ds.images.nbytes),
            "mean_pixel": float(ds.images[:: max(1, ds.images.shape[0] // 1000)].mean()),
        },
        "metadata_keys": sorted(ds.metadata),
        "problems": problems,
        "notes": notes,
    }


def format_inspection(report: dict[str, Any]) -> str:
    """The report of :func:`inspect_dataset` as plain text, one fact per line, problems last.

    Args:
        report: the dict returned by :func:`inspect_dataset`.

    Returns:
        Multi-line text (no trailing newline).
    """
    r = report
    el, ret, succ, act, obs = (
        r["episode_length"],
        r["returns"],
        r["successes"],
        r["actions"],
        r["observations"],
    )
    lines = [
        f"transitions: {r['transitions']}",
        f"episodes: {r['episodes']} (length min {el['min']} / mean {el['mean']:.1f} / max {el['max']} "
        f"steps; {r['terminals']} end terminal, {r['timeouts']} by timeout)",
        f"return per episode: min {ret['min']:.4g} / mean {ret['mean']:.4g} / max {ret['max']:.4g}",
        f"rewards per step: min {r['rewards']['min']:.4g} / mean {r['rewards']['mean']:.4g} / max "
        f"{r['rewards']['max']:.4g}",
        f"successful episodes (a positive reward): {succ['episodes']} of {r['episodes']} (behaviour success "
        f"rate {succ['behaviour_success_rate']:.2f})",
        f"actions: {act['dim']} dims, {act['bounds']} bounds; {act['steps_at_bound_fraction']:.1%} of steps "
        f"have a component within {BOUND_TOL:g} of a bound"
        + ("" if act["bounds"] == "declared" else " (observed bounds: the data's own min/max)"),
        f"  {'dim':>7} {'min':>10} {'max':>10} {'low bound':>10} {'high bound':>10} {'at bound':>9}",
    ]
    for j in range(act["dim"]):
        lines.append(
            f"  {j:>7} {act['min'][j]:>10.4g} {act['max'][j]:>10.4g} {act['low'][j]:>10.4g} "
            f"{act['high'][j]:>10.4g} {act['at_bound_fraction'][j]:>9.1%}"
        )
    lines.append(
        f"observations: {obs['dim']} features; std from {obs['std_min']:.4g} to {obs['std_max']:.4g}; "
        f"constant features: {_short_list(obs['constant_features']) if obs['constant_features'] else 'none'}"
    )
    lines.append(f"  {'feature':>7} {'min':>10} {'max':>10} {'std':>10}")
    shown = min(obs["dim"], _MAX_FEATURE_ROWS)
    for i in range(shown):
        lines.append(f"  {i:>7} {obs['min'][i]:>10.4g} {obs['max'][i]:>10.4g} {obs['std'][i]:>10.4g}")
    if obs["dim"] > shown:
        lines.append(f"  ... {obs['dim'] - shown} more features (see the report's 'observations')")
    if r.get("images"):
        im = r["images"]
        lines.append(
            f"images: {im['frames']} frames of {tuple(im['shape'])} uint8, stored once per state "
            f"({im['bytes'] / 1e9:.2f} GB in memory); mean pixel {im['mean_pixel']:.1f}"
        )
    lines.append(f"metadata keys: {', '.join(r['metadata_keys']) if r['metadata_keys'] else '(none)'}")
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    if r["problems"]:
        lines.append(f"problems ({len(r['problems'])}):")
        lines.extend(f"  - {p}" for p in r["problems"])
    else:
        lines.append("problems: none found")
    return "\n".join(lines)


def _short_list(indices: Any, limit: int = 20) -> str:
    idx = [int(i) for i in indices]
    if len(idx) <= limit:
        return str(idx)
    return f"{idx[:limit]} and {len(idx) - limit} more"
