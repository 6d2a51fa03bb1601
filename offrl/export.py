"""Export a trained policy as a self-contained folder for deployment, and load it back.

Layout of an export folder::

    OUT/policy.json        what the policy is: format version, algo, dimensions, actor widths, observation
                           normaliser, action bounds, source run and step, input/output contract, file hashes
    OUT/actor.msgpack      the actor parameters (``flax.serialization.to_bytes``); for a checkpoint ensemble the
                           k members' parameters stacked along a new leading axis of length k
    OUT/policy.jax_export  the whole policy (normalisation, actor, tanh, and an ensemble's mean) compiled by
                           ``jax.export`` for any batch size; absent when the export had no ``flatbuffers`` (see
                           :func:`export_policy`)
    OUT/README.txt         how to load it

Checkpoint ensembles (``export_policy(..., ensemble=k)``, ``offrl export RUN --ensemble K``): the exported policy
is the mean of the deterministic actions tanh(mu(normalize(obs))) of the selected checkpoint and the k - 1
checkpoints before it, all of the same actor (trained or averaged), as Snapshot Ensembles average the outputs of
the last m snapshots of one training run (Huang et al., 2017, "Snapshot Ensembles: Train 1, get M for free",
ICLR, Sec. 3, "Ensembling at test time"). It is meant to smooth over the checkpoint-to-checkpoint jumps in
success; the mean of actions in [-1, 1] stays in [-1, 1]. policy.json records ``ensemble`` (k) and
``source.steps``, with format version 4; single-checkpoint exports are written exactly as before.

Loading (:func:`load_policy`) needs only numpy, JAX, Flax and :mod:`offrl.networks`; never the training or
dataset code, Orbax or MetaWorld. The compiled form needs only JAX (with flatbuffers, which its serialisation
imports).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "offrl.policy"
FORMAT_VERSION = 4
"""Version of the export layout; :func:`load_policy` refuses newer ones. State policies are written as version 1
(unchanged), image policies as version 2 (policy.json's ``observation`` section), Trajectory Transformer
planners as version 3 (policy.json's ``planner`` section), checkpoint ensembles (state or image) as version 4
(policy.json's ``ensemble``, stacked parameters), so an offrl that cannot run a policy refuses it instead of
misreading it."""
POLICY_FILE = "policy.json"
PARAMS_FILE = "actor.msgpack"
COMPILED_FILE = "policy.jax_export"
README_FILE = "README.txt"
COMPILED_PLATFORMS = ("cpu", "cuda")
"""Platforms lowered into policy.jax_export, so an export made on a GPU machine also runs on a CPU robot."""
DEFAULT_OUT = "policy"
"""Folder name, inside the run directory, of an export when no ``out`` is given."""
CONTRACT = {
    "input": "raw (unnormalised) observations, float32, shape (B, obs_dim) or (obs_dim,)",
    "output": "actions, float32, shape (B, act_dim) or (act_dim,), in [-1, 1] (the units of the dataset's "
              "actions; the policy does not rescale them to action_low/action_high)",
    "action": "deterministic tanh(mu(normalize(obs))), the mean action of the tanh-Gaussian actor",
    "normalize": "(obs - normalizer.mean) / normalizer.std, per feature, in float32",
}
IMAGE_CONTRACT = {
    "input": "{'image': uint8 (B, H, W, C) or (H, W, C), the last frame_stack camera frames stacked along the "
             "channel axis, oldest first; 'state': float32 (B, obs_dim) or (obs_dim,), the raw low-dimensional "
             "state of the dataset's layout (only observation.state_columns are used)}",
    "output": CONTRACT["output"],
    "action": "deterministic tanh(mu(image, normalize(state[state_columns]))) of the tanh-Gaussian actor",
    "normalize": "(state[:, state_columns] - normalizer.mean) / normalizer.std, in float32; pixels / 255 in "
                 "the network",
}
PLANNER_CONTRACT = {
    **CONTRACT,
    "action": "the first action of the best beam-search plan of the Trajectory Transformer from the normalised "
              "observation alone (offrl.networks.trajectory_transformer.plan; settings in policy.json planner), "
              "reconstructed from its bins; deterministic (fixed sampling key)",
}
ENSEMBLE_ACTION = ("the mean, over the {k} checkpoints of source.steps, of each one's {action} (actor.msgpack "
                   "holds their parameters stacked along a leading axis of length {k}); Snapshot Ensembles, Huang et "
                   "al. 2017")
"""policy.json ``contract.action`` of a checkpoint ensemble, from the single checkpoint's."""
PLANNER_NOTE = ("the Trajectory Transformer's beam search is exported as its parameters and settings (actor.msgpack, "
                "policy.json planner), run by offrl.networks.trajectory_transformer: its discrete choices are not "
                "reproducible to rounding by a separately compiled program")


def export_policy(
    run_dir: str | Path,
    step: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    compiled: bool | None = None,
    actor: str | None = None,
    ensemble: int = 1,
) -> Path:
    """Write the deterministic policy of a run's checkpoint as a self-contained folder (see module docstring).

    The folder is built in a temporary sibling, checked (both the rebuilt actor and the compiled form must
    reproduce the checkpoint's actions on probe observations) and then renamed into place, so ``out`` is
    never left half-written. With ``overwrite`` an existing export is replaced only once the new one is
    complete (it is moved aside, the new one renamed in, then the old one deleted).

    Args:
        run_dir: run directory made by ``offrl train``.
        step: checkpoint step; None for the ``selected_step`` of RUN_DIR/diagnosis.json, diagnosed now by the
            rule the run recorded when it was trained when there is none yet.
        out: folder to create; None for RUN_DIR/policy.
        overwrite: replace an existing export at ``out``. A folder that is not an offrl policy export is
            never replaced.
        compiled: write policy.jax_export. None: when possible (``jax.export`` serialisation needs the
            ``flatbuffers`` package; without it the export is written without the file, with a warning; never
            for a Trajectory Transformer, see :data:`PLANNER_NOTE`); True: required (an error without
            ``flatbuffers``); False: never.
        actor: which actor to export, "trained" or "averaged" (the Polyak average a run with ``actor_ema_decay``
            > 0 keeps); None: the run's recorded choice (config.json ``deployment.actor``, else "trained";
            :func:`offrl.training.policy.actor_params`). Written to policy.json ``source.actor``.
        ensemble: number k of checkpoints whose deterministic actions the policy averages: the one at ``step``
            and the k - 1 complete checkpoints before it, each with the same ``actor`` (module docstring). 1: that
            checkpoint alone, written exactly as before ensembles existed (format version 1, 2 or 3). k > 1:
            policy.json ``ensemble`` = k, ``source.steps`` (ascending), format version 4; the check above
            compares against the mean of the k checkpoints' own actions.

    Returns:
        The export folder ``out``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory, it has no checkpoints, or none at ``step``.
        FileExistsError: ``out`` exists and ``overwrite`` is False, or it is not a policy export.
        ValueError: diagnosis.json selects no checkpoint (pass ``step``), or the checkpoint does not match; or
            ``compiled=True`` for a Trajectory Transformer (its planner is exported as parameters and settings);
            or ``ensemble`` is not a whole number >= 1, exceeds the checkpoints up to ``step``, or is > 1 for a
            Trajectory Transformer (a beam-search planner, not an action to average).
        ImportError: ``compiled=True`` and ``flatbuffers`` is not installed.
        RuntimeError: the exported files do not reproduce the checkpoint's actions (nothing is written).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / DEFAULT_OUT
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.json'} not found: {run_dir} is not a run made by `offrl train`")
    run_cfg = json.loads((run_dir / "config.json").read_text())
    if run_cfg.get("dataset", {}).get("metadata", {}).get("action_space") == "discrete":
        raise ValueError(f"{run_dir} is a discrete-action run: exporting it is not built yet")
    if isinstance(ensemble, bool) or not isinstance(ensemble, (int, np.integer)) or ensemble < 1:
        raise ValueError(f"ensemble must be a whole number of checkpoints >= 1 (1: the selected one alone); "
                         f"got {ensemble!r}")
    ensemble = int(ensemble)
    if ensemble > 1 and run_cfg.get("algo") == "tt":
        raise ValueError(f"{run_dir} is a Trajectory Transformer run: its beam-search planner has no action to "
                         f"average over checkpoints; export one checkpoint (--ensemble 1, ensemble=1 in Python)")
    _check_replaceable(out, overwrite)  # before the slow part, so a refusal costs nothing

    # The training stack (Orbax, optax, agents) is imported here only: loading an export must not need it.
    from offrl.training.policy import actor_params, load_state
    from offrl.workflow.rules import run_actor

    step, step_source = _resolve_step(run_dir, step)
    steps = _ensemble_steps(run_dir, step, ensemble)
    state, cfg = load_state(run_dir, step)
    actor = run_actor(cfg, actor)
    # The same actor of every member, in the order of ``steps``; only the actors are kept, not k agent states.
    members = [*(actor_params(load_state(run_dir, s)[0], cfg, actor) for s in steps[:-1]),
               actor_params(state, cfg, actor)]
    ds = cfg["dataset"]
    planner = cfg.get("algo") == "tt"  # a sequence model planning by beam search, not a tanh-Gaussian actor
    observation = _observation_spec(cfg)
    mean = np.asarray(cfg["normalizer"]["mean"], np.float32)
    std = np.asarray(cfg["normalizer"]["std"], np.float32)
    # An ensemble's parameters are stacked along a new leading axis of length k, member i at index i.
    stored = (jax.device_get(members[0]) if ensemble == 1
              else jax.tree.map(lambda *leaves: np.stack(leaves), *jax.device_get(members)))
    files, compiled_note = _policy_files(stored, cfg, observation, planner, compiled, ensemble)
    source: dict[str, Any] = {"run_dir": str(run_dir.resolve()), "step": step}
    if ensemble > 1:
        source["steps"] = steps
    source.update({"step_source": step_source, "actor": actor, "dataset_fingerprint": ds.get("fingerprint"),
                   "task": ds.get("task"), "offrl_version": cfg.get("offrl_version")})
    spec = _policy_spec(cfg, observation, planner, files, compiled_note, source, ensemble)
    files[POLICY_FILE] = (json.dumps(spec, indent=2) + "\n").encode()
    files[README_FILE] = _readme(spec).encode()
    probe, expected = _reference_actions(members, cfg, observation, mean, std, planner)
    _write_checked(files, out, overwrite, probe, expected)
    return out


def _ensemble_steps(run_dir: Path, step: int, ensemble: int) -> list[int]:
    """The checkpoint steps of an export, ascending: ``step`` and the ``ensemble`` - 1 complete checkpoints
    before it (:func:`offrl.training.run_dir.checkpoint_steps`). Raises ValueError when there are fewer."""
    if ensemble == 1:
        return [step]  # a missing checkpoint at ``step`` is reported by load_state, as always
    from offrl.training.run_dir import checkpoint_steps

    saved = checkpoint_steps(run_dir)
    before = [s for s in saved if s < step]
    if len(before) < ensemble - 1:
        upto = [s for s in saved if s <= step]
        raise ValueError(f"--ensemble {ensemble} needs {ensemble} checkpoints ending at step {step}, but {run_dir} "
                         f"has {len(upto)} up to it {upto}: lower --ensemble (ensemble= in Python) or choose a "
                         f"later --step")
    return [*before[len(before) - (ensemble - 1):], step]


def _observation_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the policy reads (policy.json ``observation``): the mode, and for image policies the image shape,
    the frame stack, the state columns the actor uses and the camera."""
    ds = cfg["dataset"]
    observation: dict[str, Any] = {"mode": ds.get("obs_mode", "state")}
    if observation["mode"] != "state":
        observation.update(
            image_shape=[int(d) for d in ds["obs_spec"]["image"]],
            frame_stack=int(cfg["training"].get("frame_stack", 1)),
            state_columns=[int(c) for c in ds["state_columns"]],
            camera=(ds.get("metadata") or {}).get("image"),
        )
    return observation


def _policy_files(actor_params: Any, cfg: dict[str, Any], observation: dict[str, Any], planner: bool,
                  compiled: bool | None, ensemble: int = 1) -> tuple[dict[str, bytes], str | None]:
    """The parameter file and, where it can be written, the compiled form; and why the compiled form is missing
    (None when written). ``actor_params`` holds an ensemble's k members stacked along a leading axis when
    ``ensemble`` = k > 1. Raises as :func:`export_policy` says for ``compiled``."""
    import flax.serialization

    ds = cfg["dataset"]
    files = {PARAMS_FILE: flax.serialization.to_bytes(actor_params)}
    if planner:
        if compiled:
            raise ValueError(f"{COMPILED_FILE} cannot be written for a Trajectory Transformer: {PLANNER_NOTE}")
        return files, PLANNER_NOTE
    if compiled is False:
        return files, "export_policy(compiled=False)"
    hidden = tuple(int(h) for h in cfg["agent"].get("actor_hidden_dims", ()))
    try:
        files[COMPILED_FILE] = _export_compiled(
            actor_params, np.asarray(cfg["normalizer"]["mean"], np.float32),
            np.asarray(cfg["normalizer"]["std"], np.float32), hidden, int(ds["obs_dim"]), int(ds["act_dim"]),
            cfg["agent"].get("actor_encoder", "cnn"), observation, ensemble)
    except ImportError as e:  # jax.export serialisation imports flatbuffers, an optional JAX dependency
        if compiled:
            raise ImportError(f"writing {COMPILED_FILE} needs `pip install flatbuffers`: {e}") from e
        note = f"jax.export serialisation needs the flatbuffers package: {e}"
        warnings.warn(f"{COMPILED_FILE} not written ({note}); the rest of the export is usable", stacklevel=3)
        return files, note
    return files, None


def _policy_spec(cfg: dict[str, Any], observation: dict[str, Any], planner: bool, files: dict[str, bytes],
                 compiled_note: str | None, source: dict[str, Any], ensemble: int = 1) -> dict[str, Any]:
    """policy.json's content: the actor's shape and inputs, the normaliser, the action range, where it comes from
    (``source``), the contract of the loaded function, and each file's SHA-256. A checkpoint ensemble
    (``ensemble`` > 1) adds ``ensemble`` and is format version 4; otherwise nothing differs from before ensembles."""
    ds = cfg["dataset"]
    meta = ds.get("metadata") or {}
    contract = PLANNER_CONTRACT if planner else CONTRACT if observation["mode"] == "state" else IMAGE_CONTRACT
    if ensemble > 1:
        contract = {**contract, "action": ENSEMBLE_ACTION.format(k=ensemble, action=contract["action"])}
    return {
        "format": FORMAT,
        "format_version": 4 if ensemble > 1 else 3 if planner else 1 if observation["mode"] == "state" else 2,
        "algo": cfg.get("algo", "cql"),
        "obs_dim": int(ds["obs_dim"]),
        "act_dim": int(ds["act_dim"]),
        "actor_hidden_dims": [int(h) for h in cfg["agent"].get("actor_hidden_dims", ())],
        "actor_encoder": cfg["agent"].get("actor_encoder", "cnn"),
        "observation": observation,
        **({"ensemble": ensemble} if ensemble > 1 else {}),
        **({"planner": cfg["agent"]} if planner else {}),
        "normalizer": {"mean": np.asarray(cfg["normalizer"]["mean"], np.float32).tolist(),
                       "std": np.asarray(cfg["normalizer"]["std"], np.float32).tolist()},
        "action_low": meta.get("action_low"),
        "action_high": meta.get("action_high"),
        "source": source,
        "contract": contract,
        "compiled": (
            {"file": COMPILED_FILE, "platforms": list(COMPILED_PLATFORMS), "jax_version": jax.__version__}
            if COMPILED_FILE in files else {"file": None, "note": compiled_note}
        ),
        "files": {name: _sha256(data) for name, data in files.items()},
        "exported_by": {"offrl_version": _offrl_version(), "jax_version": jax.__version__},
    }


def _reference_actions(members: list[Any], cfg: dict[str, Any], observation: dict[str, Any], mean: np.ndarray,
                       std: np.ndarray, planner: bool) -> tuple[Any, np.ndarray]:
    """Probe observations (4, seeded) and the actions the checkpoint itself takes on them, computed as
    offrl.training.policy.checkpoint_policy does: what the written export must reproduce. ``members`` holds the
    actor parameters of each checkpoint; for more than one, the reference is the mean of their actions
    (:func:`_ensemble_mean`)."""
    from offrl.agents import common

    obs_dim, act_dim = int(cfg["dataset"]["obs_dim"]), int(cfg["dataset"]["act_dim"])
    rng = np.random.default_rng(0)
    if observation["mode"] == "state":
        probe = mean + std * rng.normal(size=(4, obs_dim)).astype(np.float32)
        net_in: Any = ((probe - mean) / std).astype(np.float32)
    else:
        cols = observation["state_columns"]
        raw = rng.normal(size=(4, obs_dim)).astype(np.float32)
        raw[:, cols] = mean + std * raw[:, cols]
        probe = {"image": rng.integers(0, 256, (4, *observation["image_shape"])).astype(np.uint8), "state": raw}
        net_in = {"image": probe["image"], "state": ((raw[:, cols] - mean) / std).astype(np.float32)}
    if planner:
        from offrl.networks.trajectory_transformer import PlannerSettings, plan

        (actor_params,) = members  # export_policy refuses planner ensembles
        return probe, np.asarray(plan(actor_params, net_in, act_dim, PlannerSettings.of(cfg["agent"]))[0])
    hidden = tuple(int(h) for h in cfg["agent"].get("actor_hidden_dims", ()))
    encoder = cfg["agent"].get("actor_encoder", "cnn")
    actions = [np.asarray(common.deterministic_action(p, net_in, act_dim, hidden, encoder)) for p in members]
    return probe, actions[0] if len(actions) == 1 else _ensemble_mean(actions)


def _ensemble_mean(actions: list[Any]) -> np.ndarray:
    """The action of a checkpoint ensemble: the mean over the k members of their actions, each (B, act_dim)
    float32 -> (B, act_dim) float32, summed in member order in float32 (numpy), then divided by k (Huang et al.
    2017, Snapshot Ensembles, Sec. 3: the average of the last m snapshots' outputs). The one formula both the
    export's check and :func:`load_policy` use, so that they agree bit for bit."""
    return np.mean(np.stack([np.asarray(a, np.float32) for a in actions]), axis=0)


def _write_checked(files: dict[str, bytes], out: Path, overwrite: bool, probe: Any, expected: np.ndarray) -> None:
    """Write the files into a hidden temporary sibling of ``out``, check that they reproduce ``expected`` on
    ``probe``, then rename them into place; nothing is left behind on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so that the final rename stays on one file system; hidden, so that it is not taken for an
    # export; created with mkdir (not mkdtemp, whose 0700 mode would make the export private to its writer).
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        _verify(tmp, probe, expected)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_policy_spec(path: str | Path) -> dict[str, Any]:
    """The policy.json of an export folder, checked.

    Raises:
        FileNotFoundError: no such folder, or it has no policy.json.
        ValueError: policy.json is not an offrl policy description, or its format version is newer than
            this offrl supports.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"policy export folder {folder} not found (made by `offrl.export.export_policy`)")
    file = folder / POLICY_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {folder} is not a policy export")
    try:
        spec = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from e
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{file} is not an offrl policy description (no \"format\": \"{FORMAT}\")")
    version = spec.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{file} has format version {version!r}; this offrl ({_offrl_version()}) reads up to "
            f"{FORMAT_VERSION}: upgrade offrl to load it"
        )
    return spec


def load_policy(path: str | Path, compiled: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Load an export folder as a function from raw observations to actions.

    The returned function accepts observations of shape (obs_dim,) or (B, obs_dim), any float dtype (cast to
    float32), and returns float32 actions of shape (act_dim,) or (B, act_dim) in [-1, 1]: the deterministic
    ``tanh(mu(normalize(obs)))``, identical to ``offrl.training.policy.load_policy`` of the source checkpoint.
    It raises ValueError for observations of another shape. Image policies (policy.json ``observation.mode``
    ``image`` or ``image+proprio``) take ``{"image": uint8 (B, H, W, C) or (H, W, C), "state": (B, obs_dim) or
    (obs_dim,)}``: the stacked camera frames and the raw state, of which the policy uses its state columns.
    Trajectory Transformer exports (policy.json ``planner``) return the first action of the best beam-search plan
    instead (:data:`PLANNER_CONTRACT`). Checkpoint ensembles (policy.json ``ensemble`` = k, format version 4)
    return the mean of the k checkpoints' actions (:data:`ENSEMBLE_ACTION`); same inputs and outputs.

    Args:
        path: folder written by :func:`export_policy`.
        compiled: run policy.jax_export through ``jax.export.deserialize`` (no Flax, no network code; needs
            the ``flatbuffers`` package) instead of rebuilding the actor from policy.json and actor.msgpack.
            Its actions agree with the default path to float32 rounding (about 1e-7), not always bit for bit.

    Raises:
        FileNotFoundError: no such folder, or a file of the export is missing (policy.jax_export, with
            ``compiled``, also when the export was written without it).
        ValueError: policy.json is invalid or of a newer format version; a file's hash does not match
            policy.json (a corrupted or partial copy); the parameters do not fit the described actor (or
            ensemble of k actors).
        ImportError: ``compiled`` and ``flatbuffers`` is not installed.
    """
    folder = Path(path)
    spec = read_policy_spec(folder)
    obs_dim, act_dim = int(spec["obs_dim"]), int(spec["act_dim"])
    observation = spec.get("observation") or {"mode": "state"}
    if compiled:
        if not (spec.get("compiled") or {}).get("file"):
            note = (spec.get("compiled") or {}).get("note", "")
            raise FileNotFoundError(f"{folder} has no {COMPILED_FILE} (written without it: {note}); "
                                    f"load it with compiled=False")
        run = _compiled_fn(_read_checked(folder, COMPILED_FILE, spec), spec, folder)
    else:
        run = _network_fn(_read_checked(folder, PARAMS_FILE, spec), spec, folder)

    if observation["mode"] != "state":
        return _image_policy(run, obs_dim, act_dim, tuple(observation["image_shape"]))

    def policy(observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        if obs.ndim not in (1, 2) or obs.shape[-1] != obs_dim:
            raise ValueError(
                f"observations must have shape ({obs_dim},) or (B, {obs_dim}) for this policy; got {obs.shape}"
            )
        batch = obs.reshape(-1, obs_dim)
        if batch.shape[0] == 0:  # the compiled form's symbolic batch size is at least 1
            return np.zeros((0, act_dim), np.float32)
        actions = np.asarray(run(batch), dtype=np.float32)
        return actions[0] if obs.ndim == 1 else actions

    return policy


def _image_policy(
    run: Callable[..., Any], obs_dim: int, act_dim: int, image_shape: tuple[int, ...]
) -> Callable[[dict[str, Any]], np.ndarray]:
    """The user-facing function of an image policy: checks ``{"image", "state"}`` inputs, single or batched."""

    def policy(observations: dict[str, Any]) -> np.ndarray:
        if not isinstance(observations, dict) or not {"image", "state"} <= set(observations):
            raise ValueError("this policy takes {'image': uint8 (B, H, W, C), 'state': float32 (B, obs_dim)}")
        image = np.asarray(observations["image"])
        state = np.asarray(observations["state"], dtype=np.float32)
        single = image.ndim == 3
        if image.shape[-3:] != image_shape or image.ndim not in (3, 4):
            raise ValueError(f"'image' must have shape {image_shape} or (B, *{image_shape}); got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"'image' must be uint8 pixels in [0, 255]; got dtype {image.dtype}")
        image = image.reshape(-1, *image_shape)
        state = state.reshape(-1, obs_dim) if state.shape[-1:] == (obs_dim,) else state
        if state.shape != (image.shape[0], obs_dim):
            raise ValueError(f"'state' must have shape ({obs_dim},) or (B, {obs_dim}) matching the images; "
                             f"got {np.shape(observations['state'])}")
        if image.shape[0] == 0:
            return np.zeros((0, act_dim), np.float32)
        actions = np.asarray(run(image, state), dtype=np.float32)
        return actions[0] if single else actions

    return policy


def _network_fn(blob: bytes, spec: dict[str, Any], folder: Path) -> Callable[..., Any]:
    """Rebuild the actor from policy.json and the msgpack parameters: (B, obs_dim) raw -> (B, act_dim), or for
    image policies (images (B, H, W, C) uint8, raw states (B, obs_dim)) -> (B, act_dim). For a checkpoint
    ensemble (policy.json ``ensemble`` = k), the k actors of the stacked parameters, each run as a single one
    is, and the mean of their actions (:func:`_ensemble_mean`)."""
    import flax.serialization
    import jax.numpy as jnp

    from offrl.networks.actor import TanhGaussianActor

    ensemble = spec.get("ensemble", 1)
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise ValueError(f"{folder / POLICY_FILE}: ensemble must be a whole number >= 1; got {ensemble!r}")
    if spec.get("planner") is not None:
        if ensemble > 1:
            raise ValueError(f"{folder / POLICY_FILE} describes an ensemble of Trajectory Transformer planners, "
                             f"which offrl does not export: a damaged or foreign policy.json")
        return _planner_fn(blob, spec, folder)
    obs_dim, act_dim = int(spec["obs_dim"]), int(spec["act_dim"])
    hidden = tuple(int(h) for h in spec["actor_hidden_dims"])
    observation = spec.get("observation") or {"mode": "state"}
    image = observation["mode"] != "state"
    cols = list(observation.get("state_columns", range(obs_dim)))
    mean = np.asarray(spec["normalizer"]["mean"], np.float32)
    std = np.asarray(spec["normalizer"]["std"], np.float32)
    if mean.shape != (len(cols),) or std.shape != (len(cols),):
        raise ValueError(f"{folder / POLICY_FILE}: normalizer mean/std have shapes {mean.shape}/{std.shape}, "
                         f"expected ({len(cols)},)")
    actor = TanhGaussianActor(hidden, act_dim=act_dim, encoder=spec.get("actor_encoder", "cnn"))
    params = flax.serialization.msgpack_restore(blob)
    example: Any = jax.ShapeDtypeStruct((1, obs_dim), jnp.float32)
    if image:
        example = {"image": jax.ShapeDtypeStruct((1, *observation["image_shape"]), jnp.uint8),
                   "state": jax.ShapeDtypeStruct((1, len(cols)), jnp.float32)}
    like = jax.eval_shape(actor.init, jax.random.PRNGKey(0), example)
    if ensemble > 1:  # the members' parameters stacked along a leading axis
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct((ensemble, *x.shape), x.dtype), like)
    if _shapes(params) != _shapes(like):
        what = f"an ensemble of {ensemble} " if ensemble > 1 else ""
        raise ValueError(
            f"{folder / PARAMS_FILE} does not hold the parameters of {what}TanhGaussianActor{hidden} for obs_dim "
            f"{obs_dim}, act_dim {act_dim}: {_shapes(params)} != {_shapes(like)}"
        )
    params = jax.device_put(params)
    members = [params] if ensemble == 1 else [jax.tree.map(lambda x, i=i: x[i], params) for i in range(ensemble)]

    @jax.jit
    def action(p: Any, obs: Any) -> jnp.ndarray:
        # Same computation as offrl.agents.common.deterministic_action, so the actions match it exactly.
        return jnp.tanh(actor.apply(p, obs)[0])

    def normalize(state: np.ndarray) -> np.ndarray:
        # In numpy exactly as offrl.data.Normalizer does, for bit-identical inputs to the actor.
        return ((state - mean) / std).astype(np.float32)

    def act(obs: Any) -> Any:
        # Each member exactly as a single-checkpoint export runs it, then the mean the export was checked against.
        actions = [action(p, obs) for p in members]
        return actions[0] if ensemble == 1 else _ensemble_mean(actions)

    if image:
        return lambda images, states: act({"image": images, "state": normalize(states[:, cols])})
    return lambda batch: act(normalize(batch))


def _planner_fn(blob: bytes, spec: dict[str, Any], folder: Path) -> Callable[..., Any]:
    """A Trajectory Transformer planner from policy.json's ``planner`` settings and the msgpack parameters:
    (B, obs_dim) raw -> (B, act_dim), as offrl.agents.trajectory_transformer.deterministic_action."""
    import flax.serialization
    import jax.numpy as jnp

    from offrl.networks.trajectory_transformer import PlannerSettings, model_of, plan

    obs_dim, act_dim = int(spec["obs_dim"]), int(spec["act_dim"])
    settings = PlannerSettings.of(spec["planner"])
    t_dim = obs_dim + act_dim + 2
    mean = np.asarray(spec["normalizer"]["mean"], np.float32)
    std = np.asarray(spec["normalizer"]["std"], np.float32)
    params = flax.serialization.msgpack_restore(blob)
    model = model_of(settings, t_dim)
    bins = jax.ShapeDtypeStruct((settings.num_bins + 1, t_dim), jnp.float32)
    like = {
        "model": jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                jax.ShapeDtypeStruct((1, settings.context_transitions * t_dim), jnp.int32)),
        "discretizer": {"edges": bins, "centres": jax.ShapeDtypeStruct((settings.num_bins, t_dim), jnp.float32)},
    }
    if _shapes(params) != _shapes(like):
        raise ValueError(f"{folder / PARAMS_FILE} does not hold the parameters of the Trajectory Transformer that "
                         f"{folder / POLICY_FILE} describes")
    params = jax.device_put(params)
    return lambda batch: plan(params, ((batch - mean) / std).astype(np.float32), act_dim, settings)[0]


def _compiled_fn(blob: bytes, spec: dict[str, Any], folder: Path) -> Callable[..., Any]:
    """Deserialise policy.jax_export: (B, obs_dim) raw observations -> (B, act_dim) actions, or for image
    policies (images, raw states) -> actions."""
    obs_dim, act_dim = int(spec["obs_dim"]), int(spec["act_dim"])
    observation = spec.get("observation") or {"mode": "state"}
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except ImportError as e:
        raise ImportError(f"loading {folder / COMPILED_FILE} needs `pip install flatbuffers`: {e}") from e
    ins = [tuple(a.shape[1:]) for a in exported.in_avals]
    want = [(obs_dim,)] if observation["mode"] == "state" else [tuple(observation["image_shape"]), (obs_dim,)]
    (out_aval,) = exported.out_avals
    if ins != want or out_aval.shape[-1] != act_dim:
        raise ValueError(f"{folder / COMPILED_FILE} maps inputs {ins} -> {out_aval.shape}, but policy.json says "
                         f"{want} -> (B, {act_dim})")
    # jit caches the compilation per batch size; calling exported.call directly would recompile every call.
    return jax.jit(exported.call)


def _export_compiled(
    actor_params: Any, mean: np.ndarray, std: np.ndarray, hidden: tuple[int, ...], obs_dim: int, act_dim: int,
    encoder: str = "cnn", observation: dict[str, Any] | None = None, ensemble: int = 1,
) -> bytes:
    """Serialised ``jax.export`` of raw observations (b, obs_dim) float32 -> actions (b, act_dim) float32, or
    for image policies of (images (b, H, W, C) uint8, raw states (b, obs_dim) float32), with the parameters and
    the normaliser baked in as constants and a symbolic batch size b >= 1. With ``ensemble`` = k > 1,
    ``actor_params`` are k members stacked along a leading axis and the program returns the mean of their
    actions, ``jnp.mean`` over ``jax.vmap`` of the members (equal to :func:`_ensemble_mean` to float32
    rounding)."""
    import jax.numpy as jnp

    from offrl.networks.actor import TanhGaussianActor

    actor = TanhGaussianActor(hidden, act_dim=act_dim, encoder=encoder)
    (b,) = jax.export.symbolic_shape("b")
    if observation is None or observation["mode"] == "state":

        def act(p: Any, obs: jnp.ndarray) -> jnp.ndarray:
            return jnp.tanh(actor.apply(p, (obs - mean) / std)[0])

        args = (jax.ShapeDtypeStruct((b, obs_dim), jnp.float32),)
    else:
        cols = jnp.asarray(observation["state_columns"], jnp.int32)

        def act(p: Any, images: jnp.ndarray, states: jnp.ndarray) -> jnp.ndarray:
            state = (states[:, cols] - mean) / std
            return jnp.tanh(actor.apply(p, {"image": images, "state": state})[0])

        args = (jax.ShapeDtypeStruct((b, *observation["image_shape"]), jnp.uint8),
                jax.ShapeDtypeStruct((b, obs_dim), jnp.float32))

    def policy(*inputs: jnp.ndarray) -> jnp.ndarray:
        if ensemble == 1:
            return act(actor_params, *inputs)
        return jnp.mean(jax.vmap(lambda p: act(p, *inputs))(actor_params), axis=0)

    exported = jax.export.export(jax.jit(policy), platforms=COMPILED_PLATFORMS)(*args)
    return bytes(exported.serialize())


def _resolve_step(run_dir: Path, step: int | None) -> tuple[int, str]:
    """The checkpoint step to export and where it came from ("argument", "diagnosis.json", "last checkpoint")."""
    if step is not None:
        return int(step), "argument"
    diagnosis = run_dir / "diagnosis.json"
    if diagnosis.is_file():
        d = json.loads(diagnosis.read_text())
        if d.get("selected_step") is None:
            # Falling back to the last checkpoint here would deploy exactly what the diagnosis advised against.
            raise ValueError(f"{diagnosis} selects no checkpoint (verdict {d.get('verdict')!r}): choose one with "
                             f"--step (step= in Python)")
        return int(d["selected_step"]), "diagnosis.json"
    # An undiagnosed run is selected by the rule it recorded when it was trained (config.json deployment.selector),
    # the one `offrl select` and the workflow use: never the last checkpoint by default, never a silent other rule.
    from offrl.workflow.diagnosis import diagnose_run

    d = diagnose_run(run_dir)
    if d.get("selected_step") is None:
        raise ValueError(f"{run_dir} selects no checkpoint (verdict {d.get('verdict')!r}): choose one with --step "
                         f"(step= in Python)")
    return int(d["selected_step"]), f"diagnosis.json (written now, --selector {d['selector']})"


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / POLICY_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists: pass --overwrite (overwrite=True in Python) to replace it, "
                              f"or choose another --out")
    if not out.is_dir() or out.is_symlink() or (any(out.iterdir()) and not _is_export(out)):
        # overwrite deletes the old folder: never do that to something that is not an export (a run dir...).
        raise FileExistsError(f"{out} exists and is not an offrl policy export: refusing to replace it")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted last."""
    _check_replaceable(out, overwrite)  # again: something may have appeared while the export was built
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _verify(folder: Path, probe: np.ndarray, expected: np.ndarray) -> None:
    """Both loading paths of the written folder must reproduce the checkpoint's actions."""
    got = load_policy(folder)(probe)
    if not np.array_equal(got, expected):
        raise RuntimeError(f"the exported actor does not reproduce the checkpoint: {got} != {expected}")
    if (folder / COMPILED_FILE).is_file():
        got = load_policy(folder, compiled=True)(probe)
        if not np.allclose(got, expected, rtol=0, atol=1e-5):
            raise RuntimeError(f"{COMPILED_FILE} does not reproduce the checkpoint: {got} != {expected}")


def _read_checked(folder: Path, name: str, spec: dict[str, Any]) -> bytes:
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the export is incomplete")
    data = file.read_bytes()
    want = (spec.get("files") or {}).get(name)
    if want is not None and _sha256(data) != want:
        raise ValueError(f"{file} does not match the hash in {POLICY_FILE}: a corrupted or partial copy")
    return data


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _offrl_version() -> str:
    import offrl

    return offrl.__version__


def _readme(spec: dict[str, Any]) -> str:
    o, a = spec["obs_dim"], spec["act_dim"]
    inputs = f"raw observations float32 (B, {o})"
    observation = spec.get("observation") or {"mode": "state"}
    if observation["mode"] != "state":
        inputs = (f"{{'image': uint8 (B, {', '.join(map(str, observation['image_shape']))}), 'state': float32 "
                  f"(B, {o})}} (compiled form: two arguments, images then states)")
    steps = f"step {spec['source']['step']}"
    if spec.get("ensemble", 1) > 1:
        steps = f"the mean action of steps {', '.join(map(str, spec['source']['steps']))}"
    lines = [
        f"offrl {spec['algo']} policy (run {spec['source']['run_dir']}, {steps}): "
        f"{inputs} -> actions float32 (B, {a}) in [-1, 1]; details in {POLICY_FILE}.",
        "With offrl: from offrl.export import load_policy; policy = load_policy('THIS_FOLDER'); "
        "actions = policy(observations)",
    ]
    if spec["compiled"]["file"]:
        lines.append(f"JAX only (any batch size, normalisation included): import jax; "
                     f"p = jax.export.deserialize(bytearray(open('{COMPILED_FILE}', 'rb').read())); "
                     f"actions = p.call(observations)  (needs `pip install flatbuffers`)")
    else:
        lines.append(f"No {COMPILED_FILE} in this export ({spec['compiled']['note']}).")
    return "\n".join(lines) + "\n"
