"""Headless camera images: RenderConfig, Renderer, and images in collection and evaluation.

Backend: other test files import ``mujoco`` (through MetaWorld) earlier in the same process, often with
``MUJOCO_GL=disable``, and ``mujoco`` fixes its own GL choice at import. `Renderer` does not use that
choice: it reads ``MUJOCO_GL`` when it is built and creates the context from ``mujoco.egl`` itself. So the
``_headless_gl`` fixture only has to set ``MUJOCO_GL=egl`` (per test, undone afterwards) where it is unset
or disabled. Tests that need a working GL stack skip, with the reason, where none can be created.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from offrl.envs.render import RenderConfig, Renderer, gl_backend

pytestmark = pytest.mark.sim
TASK = "pick-place-v3"
_DISABLED = ("", "disable", "disabled", "off", "false", "0")


@pytest.fixture(autouse=True)
def _headless_gl(monkeypatch):
    if os.environ.get("MUJOCO_GL", "").strip().lower() in _DISABLED:
        monkeypatch.setenv("MUJOCO_GL", "egl")


@pytest.fixture
def env():
    pytest.importorskip("metaworld")
    from offrl.envs import MetaWorldEnv

    env = MetaWorldEnv(TASK, seed=0, horizon=20)
    env.reset()
    yield env
    env.close()


@pytest.fixture
def renderer(env):
    """A 48x48 corner2 renderer of ``env``; tests that render request it to skip where GL is missing."""
    try:
        r = Renderer(env, RenderConfig(camera="corner2"))
    except RuntimeError as err:
        pytest.skip(f"no headless OpenGL here: {err}")
    yield r
    r.close()


def test_config_validation():
    assert RenderConfig().to_info() == {"size": 48, "camera": "corner4", "shadows": False, "reflections": False}
    for bad in (7, 0, -48, 48.0, True, "48"):
        with pytest.raises(ValueError, match="size"):
            RenderConfig(size=bad)
    for bad in ("", None, 2):
        with pytest.raises(ValueError, match="camera"):
            RenderConfig(camera=bad)
    with pytest.raises(ValueError, match="shadows"):
        RenderConfig(shadows="yes")
    with pytest.raises(ValueError, match="reflections"):
        RenderConfig(reflections=1)
    assert RenderConfig(size=np.int64(64)).size == 64


def test_unknown_camera_lists_the_cameras(env):
    with pytest.raises(ValueError, match=r"no camera 'nope'.*corner2.*topview|no camera 'nope'.*topview.*corner2"):
        Renderer(env, RenderConfig(camera="nope"))
    with pytest.raises(TypeError, match="RenderConfig"):
        Renderer(env, {"size": 48})


def test_disabled_gl_says_what_to_set(env, monkeypatch):
    from offrl.envs import collect_episodes

    monkeypatch.setenv("MUJOCO_GL", "disable")
    for call in (lambda: Renderer(env, RenderConfig()),
                 lambda: collect_episodes(TASK, 1, horizon=2, progress=False, render=RenderConfig())):
        with pytest.raises(RuntimeError, match="MUJOCO_GL=egl") as err:
            call()
        assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in str(err.value) and "libosmesa6" in str(err.value)
    monkeypatch.setenv("MUJOCO_GL", "vulkan")
    with pytest.raises(RuntimeError, match="Unknown MUJOCO_GL"):
        gl_backend()


def test_unset_backend_defaults_to_egl(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "")  # recorded, so the deletions below are undone
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delitem(sys.modules, "mujoco", raising=False)
    assert gl_backend() == "egl" and os.environ["MUJOCO_GL"] == "egl"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setitem(sys.modules, "mujoco", sys.modules.get("mujoco", object()))
    assert gl_backend() == "egl" and "MUJOCO_GL" not in os.environ  # too late to change mujoco's choice


def test_reset_puts_the_goal_marker_at_the_goal(env):
    for _ in range(3):
        env.reset()
        np.testing.assert_allclose(env._env.data.site("goal").xpos, env._env._target_pos)


def test_image_is_upright_and_follows_the_arm(env, renderer):
    image = renderer.render()
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert image.std() > 20
    # corner2 is mounted upside down: upright, the plain backdrop fills the top rows, and (not mirrored)
    # the red robot stands left of the table, which extends to the right.
    assert image[:3].std() < 3 < image[-3:].std()
    red = (image[..., 0] > 120) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 20 and np.nonzero(red)[1].mean() < 24
    for _ in range(10):
        env.step(np.array([1.0, 0.0, 1.0, 0.0]))
    moved = renderer.render()
    assert np.any(moved != image, axis=2).sum() > 20
    renderer.close()
    renderer.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        renderer.render()


def test_collect_with_render_stores_each_state_once(renderer):
    from offrl.envs import MetaWorldEnv, collect_episodes

    episodes, horizon = 2, 10
    data, info = collect_episodes(TASK, episodes, horizon=horizon, seed=1, progress=False, render=RenderConfig())
    plain, plain_info = collect_episodes(TASK, episodes, horizon=horizon, seed=1, progress=False)
    n = len(data["rewards"])
    images, idx, nxt = data["images"], data["image_index"], data["next_image_index"]
    assert images.shape == (n + episodes, 48, 48, 3) and images.dtype == np.uint8
    assert idx.shape == nxt.shape == (n,) and idx.dtype == nxt.dtype == np.int64
    ends = data["terminals"] | data["timeouts"]
    assert np.array_equal(nxt[:-1][~ends[:-1]], idx[1:][~ends[:-1]])
    assert np.array_equal(np.union1d(idx, nxt), np.arange(len(images)))
    for key, value in plain.items():  # rendering changes no state
        assert np.array_equal(data[key], value), key
    assert info["image"] == RenderConfig().to_info()
    assert info["proprio_dims"] == plain_info["proprio_dims"] == [0, 1, 2, 3]
    assert "image" not in plain_info

    # Replay the actions in a fresh simulator: the stored frames are the frames of those states, bit for
    # bit (software rendering is deterministic).
    replay = MetaWorldEnv(TASK, seed=1, horizon=horizon)
    with Renderer(replay, RenderConfig()) as r:
        for t in range(n):
            if t == 0 or ends[t - 1]:
                np.testing.assert_array_equal(replay.reset(), data["observations"][t])
                np.testing.assert_array_equal(r.render(), images[idx[t]])
            obs, _ = replay.step(data["actions"][t])
            np.testing.assert_array_equal(obs, data["next_observations"][t])
            np.testing.assert_array_equal(r.render(), images[nxt[t]])
    replay.close()


def test_collect_writes_an_image_dataset(renderer, tmp_path):
    from offrl.data.collect import collect
    from offrl.data.hdf5 import load_dataset

    dataset = collect(TASK, 1, tmp_path / "d.h5", horizon=5, progress=False, render=RenderConfig(size=16))
    assert dataset.metadata["image"]["size"] == 16 and dataset.metadata["proprio_dims"] == [0, 1, 2, 3]
    assert dataset.images.shape == (6, 16, 16, 3)
    loaded = load_dataset(tmp_path / "d.h5")
    for key in ("images", "image_index", "next_image_index"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(dataset, key))


def test_evaluate_policy_gets_stacked_frames(renderer):
    from offrl.envs import evaluate_policy

    seen = []

    def policy(inputs):
        seen.append({k: v.copy() for k, v in inputs.items()})
        return np.tile([1.0, 0.0, 1.0, 0.0], (len(inputs["state"]), 1))  # the hand moves: frames differ

    result = evaluate_policy(policy, TASK, episodes=3, horizon=4, num_envs=2, render=RenderConfig(), frame_stack=2)
    assert result["episodes"] == 3 and result["mean_episode_length"] == 4.0
    assert len(seen) == 8  # 2 rounds of 4 steps: episodes 0-1 side by side, then 2 beside an idle slot
    for inputs in seen:
        assert inputs["state"].shape == (2, 39) and inputs["state"].dtype == np.float32
        assert inputs["image"].shape == (2, 48, 48, 6) and inputs["image"].dtype == np.uint8
    first, second = seen[0]["image"], seen[1]["image"]
    assert np.array_equal(first[..., :3], first[..., 3:])  # the first frame repeated
    assert np.array_equal(second[..., :3], first[..., 3:])  # oldest first: last step's frame moved left
    assert not np.array_equal(second[..., 3:], second[..., :3])
    assert np.array_equal(seen[4]["image"][0, ..., :3], seen[4]["image"][0, ..., 3:])  # new episode restarts

    with pytest.raises(ValueError, match="frame_stack"):
        evaluate_policy(policy, TASK, episodes=1, horizon=2, frame_stack=2)
