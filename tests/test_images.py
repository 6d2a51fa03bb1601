"""Image observations: the dataset contract, frame stacks, augmentation, encoders, and an image training run."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import h5py
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import image_chain_arrays, tiny_train_config

from offrl.agents import cql
from offrl.data import DatasetError, load_dataset, make_dataset, save_dataset
from offrl.data.images import frame_stack_indices, obs_spec, resolve_obs_mode, stack_frames, state_columns
from offrl.networks.augment import augment_observations, random_crop
from offrl.networks.encoders import ConvEncoder, ObservationEncoder, ResNetEncoder, max_pool_2x2

# --- the dataset contract -------------------------------------------------------------------------------------


def test_image_dataset_contract(image_chain_dataset):
    ds = image_chain_dataset
    assert ds.has_images and ds.image_shape == (16, 16, 3)
    assert ds.images.dtype == np.uint8 and ds.image_index.dtype == np.int64
    # Stored once: T + 1 frames per episode of T transitions, not 2T.
    assert ds.images.shape[0] == len(ds) + ds.num_episodes
    inside = ~(ds.terminals | ds.timeouts)[:-1]
    np.testing.assert_array_equal(ds.next_image_index[:-1][inside], ds.image_index[1:][inside])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(images=a["images"].astype(np.float32)), "uint8"),
        (lambda a: a.pop("next_image_index"), "missing"),
        (lambda a: a.update(images=a["images"][..., 0]), "expected \\(num_frames, H, W, C\\)"),
        (lambda a: a["image_index"].__setitem__(3, 10_000), "is not a frame"),
        (lambda a: a["next_image_index"].__setitem__(2, 0), "s' of one transition is s of the next"),
        (lambda a: a.update(image_index=a["image_index"][:-1]), "one frame index per transition"),
    ],
)
def test_malformed_image_datasets_are_refused(change, message):
    arrays = image_chain_arrays()
    change(arrays)
    with pytest.raises(DatasetError, match=message):
        make_dataset(arrays)


def test_image_dataset_round_trip(tmp_path, image_chain_dataset):
    path = save_dataset(tmp_path / "img.h5", image_chain_dataset)
    loaded = load_dataset(path)
    for k in ("images", "image_index", "next_image_index", "observations", "actions"):
        np.testing.assert_array_equal(getattr(loaded, k), getattr(image_chain_dataset, k))
    with h5py.File(path) as f:
        assert f["images"].dtype == np.uint8
        assert f["images"].compression == "gzip"
        assert f["images"].chunks[1:] == (16, 16, 3)  # whole frames per chunk


def test_selecting_episodes_shares_the_frames(image_chain_dataset):
    part = image_chain_dataset.select_episodes(np.array([1, 3]))
    assert part.images is image_chain_dataset.images
    assert len(part) == 20
    # The frame of every selected transition is still its own: channel 0 encodes the frame index.
    np.testing.assert_array_equal(part.images[part.image_index, 0, 0, 0], part.image_index % 251)


# --- frame stacks ---------------------------------------------------------------------------------------------


def test_frame_stack_indices_repeat_the_first_frame_and_shift_by_one(image_chain_dataset):
    ds = image_chain_dataset
    obs, nxt = frame_stack_indices(ds, 3)
    # Episode 1 starts at transition 10, whose frames are 11..21.
    np.testing.assert_array_equal(obs[10], [11, 11, 11])
    np.testing.assert_array_equal(obs[12], [11, 12, 13])
    np.testing.assert_array_equal(nxt[10], [11, 11, 12])
    np.testing.assert_array_equal(nxt[19], [19, 20, 21])  # last transition: s' is the episode's final frame
    inside = ~(ds.terminals | ds.timeouts)[:-1]
    np.testing.assert_array_equal(nxt[:-1][inside], obs[1:][inside])
    one, _ = frame_stack_indices(ds, 1)
    np.testing.assert_array_equal(one[:, 0], ds.image_index)


def test_stack_frames_puts_the_oldest_frame_first_along_channels():
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    out = stack_frames(images, np.array([[0, 2], [3, 3]]))
    assert out.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(out[0, ..., :3], images[0])
    np.testing.assert_array_equal(out[0, ..., 3:], images[2])
    np.testing.assert_array_equal(np.asarray(stack_frames(jnp.asarray(images), jnp.array([[0, 2]]))), out[:1])


def test_observation_modes(image_chain_dataset, chain_dataset):
    assert resolve_obs_mode("auto", image_chain_dataset) == "image"
    assert resolve_obs_mode("auto", chain_dataset) == "state"
    assert state_columns("image+proprio", image_chain_dataset) == [0, 1]
    assert state_columns("image", image_chain_dataset) == []
    assert obs_spec("image", image_chain_dataset, 2) == {"image": [16, 16, 6], "state": 0}
    with pytest.raises(DatasetError, match="needs camera images"):
        resolve_obs_mode("image", chain_dataset)


# --- augmentation ---------------------------------------------------------------------------------------------


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (64, 12, 12, 3)), jnp.uint8)
    out = np.asarray(random_crop(jax.random.PRNGKey(1), images, pad=4))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    offsets = set()
    for i in range(len(out)):
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if np.array_equal(padded[i, dy:dy + 12, dx:dx + 12], out[i])]
        assert found, f"crop {i} is not a window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # offsets are drawn per image, not once per batch
    np.testing.assert_array_equal(np.asarray(random_crop(jax.random.PRNGKey(1), images, pad=0)), images)


def test_augmentation_leaves_states_alone():
    state = jnp.ones((4, 3))
    assert augment_observations(jax.random.PRNGKey(0), state) is state
    obs = {"image": jnp.zeros((4, 8, 8, 3), jnp.uint8), "state": state}
    assert augment_observations(jax.random.PRNGKey(0), obs)["state"] is state


# --- encoders -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "cnn", "resnet"), [(48, 2304, 18432), (64, 4096, 32768)])
def test_encoder_output_shapes(size, cnn, resnet):
    x = jnp.zeros((2, size, size, 3), jnp.uint8)
    for module, width in ((ConvEncoder(), cnn), (ResNetEncoder(), resnet)):
        params = module.init(jax.random.PRNGKey(0), x)
        assert module.apply(params, x).shape == (2, width)
    convs = [k for k in jax.tree_util.tree_leaves_with_path(ResNetEncoder().init(jax.random.PRNGKey(0), x))
             if "kernel" in jax.tree_util.keystr(k[0])]
    assert len(convs) == 9  # the paper's "9 conv layers"


def test_observation_encoder_concatenates_the_state():
    obs = {"image": jnp.zeros((5, 48, 48, 3), jnp.uint8), "state": jnp.ones((5, 4))}
    enc = ObservationEncoder("cnn")
    out = enc.apply(enc.init(jax.random.PRNGKey(0), obs), obs)
    assert out.shape == (5, 2304 + 4)
    np.testing.assert_array_equal(out[:, -4:], 1.0)


@pytest.mark.parametrize("shape", [(3, 6, 8, 2), (2, 7, 5, 3)])
def test_max_pool_has_flax_value_and_gradient_with_ties(shape):
    # Small integers make ties common: the gradient must go to the first maximum of each window, as XLA's
    # select_and_scatter does, and an odd last row or column gets none.
    x = jax.random.randint(jax.random.PRNGKey(0), shape, 0, 3).astype(jnp.float32)
    g = jax.random.normal(jax.random.PRNGKey(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    y_ref, vjp_ref = jax.vjp(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)), x)
    y, vjp = jax.vjp(max_pool_2x2, x)
    np.testing.assert_array_equal(y, y_ref)
    (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
    np.testing.assert_array_equal(dx, dx_ref)
    assert float(jnp.abs(dx).sum()) > 0


def test_channel_dropout_drops_whole_channels():
    x = jnp.full((1, 8, 8, 3), 255, jnp.uint8)
    enc = ConvEncoder(dropout_rate=0.5)
    params = enc.init(jax.random.PRNGKey(0), x)
    # Look at the first conv's output through the module's intermediates: each channel is all-zero or not.
    _, state = enc.apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)},
                         capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    kept = np.maximum(np.asarray(inter["Conv_0"]["__call__"][0]), 0).reshape(-1, 16)  # ReLU(conv 1)
    dropped = np.asarray(inter["Dropout_0"]["__call__"][0]).reshape(-1, 16)
    zero = (dropped == 0).all(axis=0) & (kept != 0).any(axis=0)
    scaled = np.isclose(dropped, 2 * kept, rtol=1e-5).all(axis=0)
    assert zero.any() and scaled.any()
    assert (zero | scaled).all()  # each channel is dropped whole or kept whole (scaled by 1 / (1 - rate))


# --- the CQL update on images ---------------------------------------------------------------------------------


def _image_batch(b=8, size=48, seed=0):
    rng = np.random.default_rng(seed)

    def obs():
        return {"image": jnp.asarray(rng.integers(0, 256, (b, size, size, 3)), jnp.uint8), "state": jnp.zeros((b, 0))}

    return {"observations": obs(), "next_observations": obs(), "actions": jnp.asarray(rng.uniform(-1, 1, (b, 4)),
            jnp.float32), "rewards": jnp.zeros(b), "terminals": jnp.zeros(b), "mc_returns": jnp.zeros(b)}


def _conv_batch_sizes(config, batch):
    state = cql.init(config, {"image": [48, 48, 3], "state": 0}, 4, jax.random.PRNGKey(0))
    jaxpr = jax.make_jaxpr(lambda st: cql.critic_terms(
        st.critic_params, st.target_critic_params, st.actor_params, st.log_temperature, batch,
        jax.random.PRNGKey(1), config))(state)
    sizes = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                sizes.append(eqn.invars[0].aval.shape[0])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return sizes


def test_the_encoder_runs_once_per_state_not_per_sampled_action():
    batch = _image_batch()
    few = _conv_batch_sizes(cql.CQLConfig(num_action_samples=1), batch)
    many = _conv_batch_sizes(cql.CQLConfig(num_action_samples=10), batch)
    # Same conv calls whatever the number of CQL samples, each on the batch of 8 states (not 3n x 8).
    assert len(few) == len(many) > 0
    assert set(many) == {8}


def test_cql_update_on_images_trains_the_encoder():
    config = cql.CQLConfig(critic_hidden_dims=(32,), actor_hidden_dims=(32,), bc_steps=0)
    state = cql.init(config, {"image": [48, 48, 3], "state": 0}, 4, jax.random.PRNGKey(0))
    new, metrics = jax.jit(lambda s, b, k: cql.update(s, b, k, config))(state, _image_batch(), jax.random.PRNGKey(2))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    before = state.critic_params["params"]["encoder_0"]["ConvEncoder_0"]["Conv_0"]["kernel"]
    after = new.critic_params["params"]["encoder_0"]["ConvEncoder_0"]["Conv_0"]["kernel"]
    assert not np.allclose(before, after)
    actor_enc = new.actor_params["params"]["encoder"]["ConvEncoder_0"]["Conv_0"]["kernel"]
    assert actor_enc.shape == (3, 3, 3, 16)


# --- training end to end --------------------------------------------------------------------------------------


def test_image_training_run_end_to_end(tmp_path, image_chain_dataset):
    from offrl.training.policy import checkpoint_policy
    from offrl.training.run_dir import read_json, read_metrics
    from offrl.training.train import train
    from offrl.workflow.diagnosis import diagnose_run

    path = save_dataset(tmp_path / "img.h5", image_chain_dataset)
    base = tiny_train_config(path, tmp_path / "run", steps=60, checkpoint_every=20, obs="image+proprio",
                             frame_stack=2)
    run = train(base)
    cfg = read_json(run / "config.json")
    assert cfg["dataset"]["obs_spec"] == {"image": [16, 16, 6], "state": 2}
    assert len(cfg["normalizer"]["mean"]) == 2
    records = read_metrics(run)
    assert [r["step"] for r in records] == [20, 40, 60]
    for key in ("q_data", "td_error", "cql_regularizer", "heldout/q_data", "srank"):
        assert np.isfinite(records[-1][key]), key
    assert diagnose_run(run)["verdict"] in ("healthy", "overfitting", "underfitting", "inconclusive")
    policy = checkpoint_policy(run, 60)
    obs = {"image": np.zeros((3, 16, 16, 6), np.uint8), "state": np.zeros((3, 3), np.float32)}
    actions = policy(obs)
    assert actions.shape == (3, 2) and np.all(np.abs(actions) <= 1)
    # Export: both loading paths reproduce the checkpoint's policy, single observations included.
    from offrl.export import export_policy
    from offrl.export import load_policy as load_export

    folder = export_policy(run, step=60, out=tmp_path / "policy")
    rng = np.random.default_rng(1)
    obs = {"image": rng.integers(0, 256, (3, 16, 16, 6)).astype(np.uint8),
           "state": rng.normal(size=(3, 3)).astype(np.float32)}
    np.testing.assert_array_equal(load_export(folder)(obs), policy(obs))
    np.testing.assert_allclose(load_export(folder, compiled=True)(obs), policy(obs), atol=1e-5)
    single = load_export(folder)({"image": obs["image"][0], "state": obs["state"][0]})
    # Against a batch of one: XLA's convolutions may round differently for another batch size.
    np.testing.assert_array_equal(single, policy({"image": obs["image"][:1], "state": obs["state"][:1]})[0])
    with pytest.raises(ValueError, match="must be uint8"):
        load_export(folder)({"image": obs["image"].astype(np.float32), "state": obs["state"]})
    with pytest.raises(ValueError, match="'image' must have shape"):
        load_export(folder)({"image": obs["image"][..., :3], "state": obs["state"]})
    # A checkpoint ensemble of an image policy: the mean of its members' actions (issue 45).
    ens = export_policy(run, step=60, out=tmp_path / "ensemble", ensemble=3)
    mean = np.mean([checkpoint_policy(run, s)(obs) for s in (20, 40, 60)], axis=0)
    np.testing.assert_allclose(load_export(ens)(obs), mean, atol=1e-6)
    np.testing.assert_allclose(load_export(ens, compiled=True)(obs), mean, atol=1e-5)
    # Resume continues the same run, with its observation mode restored from config.json.
    resumed = train(dataclasses.replace(base, steps=80, resume=True, obs="auto", frame_stack=1))
    assert [r["step"] for r in read_metrics(resumed)] == [20, 40, 60, 80]


def test_shared_encoder_is_trained_by_the_critic_and_copied_to_the_actor():
    config = cql.CQLConfig(critic_hidden_dims=(32,), actor_hidden_dims=(32,), bc_steps=0, shared_encoder=True)
    state = cql.init(config, {"image": [48, 48, 3], "state": 0}, 4, jax.random.PRNGKey(0))
    assert "encoder_1" not in state.critic_params["params"]  # one encoder for both critics

    def encoders(st):
        return (st.critic_params["params"]["encoder_0"], st.actor_params["params"]["encoder"])

    jax.tree.map(np.testing.assert_array_equal, *encoders(state))
    new, _ = jax.jit(lambda s, b, k: cql.update(s, b, k, config))(state, _image_batch(), jax.random.PRNGKey(2))
    critic_enc, actor_enc = encoders(new)
    jax.tree.map(np.testing.assert_array_equal, critic_enc, actor_enc)
    assert not np.allclose(critic_enc["ConvEncoder_0"]["Conv_0"]["kernel"],
                           encoders(state)[0]["ConvEncoder_0"]["Conv_0"]["kernel"])
    # The actor's own head still trains.
    assert not np.allclose(new.actor_params["params"]["MLP_0"]["Dense_0"]["kernel"],
                           state.actor_params["params"]["MLP_0"]["Dense_0"]["kernel"])


def test_shared_encoder_needs_one_encoder_kind(tmp_path, image_chain_dataset):
    from offrl.training.train import train

    path = save_dataset(tmp_path / "img.h5", image_chain_dataset)
    bad = tiny_train_config(path, tmp_path / "run", agent=cql.CQLConfig(shared_encoder=True, actor_encoder="resnet"))
    with pytest.raises(ValueError, match="shared_encoder needs one encoder kind"):
        train(bad)
    assert not (tmp_path / "run").exists()


def test_bc_then_brac_on_images(tmp_path, image_chain_dataset):
    """pi_beta from an image BC run carries its encoder into BRAC; a state BC run is refused for an image run."""
    from offrl.agents.bc import BCConfig
    from offrl.agents.brac import BRACConfig
    from offrl.training.run_dir import read_json
    from offrl.training.train import train

    path = save_dataset(tmp_path / "img.h5", image_chain_dataset)
    small = dict(steps=40, checkpoint_every=20, obs="image")
    bc_run = train(tiny_train_config(path, tmp_path / "bc", algo="bc", bc=BCConfig(actor_hidden_dims=(16,)),
                                     **small))
    brac = BRACConfig(critic_hidden_dims=(16,), actor_hidden_dims=(16,))
    run = train(tiny_train_config(path, tmp_path / "brac", algo="brac", brac=brac, behavior_run=bc_run, **small))
    cfg = read_json(run / "config.json")
    assert cfg["agent"]["behavior_encoder"] == "cnn" and cfg["agent"]["behavior_hidden_dims"] == [16]
    with pytest.raises(ValueError, match="same --obs and --frame-stack"):
        train(tiny_train_config(path, tmp_path / "brac2", algo="brac", brac=brac, behavior_run=bc_run,
                                **{**small, "frame_stack": 2}))


def test_inspect_reports_the_frames_and_flags_blank_cameras(image_chain_dataset):
    from offrl.data.inspect import format_inspection, inspect_dataset

    report = inspect_dataset(image_chain_dataset)
    assert report["images"]["frames"] == 66 and report["images"]["shape"] == [16, 16, 3]
    assert "images: 66 frames of (16, 16, 3) uint8" in format_inspection(report)
    assert not any("camera" in p for p in report["problems"])
    blank = dataclasses.replace(image_chain_dataset, images=np.zeros_like(image_chain_dataset.images))
    assert any("images are (nearly) constant" in p for p in inspect_dataset(blank)["problems"])


@pytest.mark.parametrize("algo", ["iql", "awac", "bear"])
def test_iql_awac_bear_updates_on_images_train_their_encoders(algo):
    from offrl.agents import CONFIGS, get_agent

    small = {"critic_hidden_dims": (32,), "actor_hidden_dims": (32,)}
    small.update({"iql": {"value_hidden_dims": (32,)}, "awac": {}, "bear": {"vae_hidden_dims": (32,)}}[algo])
    config = CONFIGS[algo](**small)
    module = get_agent(algo)
    state = module.init(config, {"image": [48, 48, 3], "state": 0}, 4, jax.random.PRNGKey(0))
    new, metrics = jax.jit(lambda s, b, k: module.update(s, b, k, config))(state, _image_batch(), jax.random.PRNGKey(2))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    kernel = lambda p: p["params"]["encoder_0"]["ConvEncoder_0"]["Conv_0"]["kernel"]  # noqa: E731
    assert not np.allclose(kernel(state.critic_params), kernel(new.critic_params))
    actor = lambda p: p["params"]["encoder"]["ConvEncoder_0"]["Conv_0"]["kernel"]  # noqa: E731
    assert not np.allclose(actor(state.actor_params), actor(new.actor_params))
    ev = module.evaluate(new, _image_batch(seed=1), jax.random.PRNGKey(3), config)
    assert all(v.shape == (8,) and np.all(np.isfinite(v)) for v in ev.values())
