"""Headless camera images of a MetaWorld scene, for image datasets and image-based evaluation.

Like the rest of ``offrl.envs``, importing this module imports neither ``mujoco`` nor ``metaworld``.

Facts this module relies on (measured with MuJoCo 3.3.0, MetaWorld 3.1.1, Mesa's software EGL on 2 CPU
cores; see ``tests/test_render.py``):

* **Backend.** ``mujoco`` reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported, and
  ``mujoco.Renderer`` uses the GL context class chosen then; with ``MUJOCO_GL=disable`` it can never
  render in that process. `Renderer` does not depend on that import-time choice: it reads
  ``MUJOCO_GL`` when it is built and creates the context itself from ``mujoco.egl``, ``mujoco.osmesa``
  or ``mujoco.glfw``, then renders with MuJoCo's low-level ``mjv_``/``mjr_`` functions. So rendering
  works even when something (e.g. MetaWorld, with ``MUJOCO_GL=disable``) imported ``mujoco`` earlier;
  setting ``MUJOCO_GL=egl`` in ``os.environ`` at any time before building a `Renderer` is enough.
  Unset ``MUJOCO_GL`` means EGL. EGL also needs PyOpenGL (a MuJoCo dependency) to use its EGL platform:
  ``mujoco.egl`` sets ``PYOPENGL_PLATFORM=egl`` unless PyOpenGL was already configured otherwise.
* **Orientation.** MetaWorld's corner cameras (``corner``, ``corner2``, ``corner3``, ``corner4``) are
  mounted upside down: their image-up axis points below the horizon, so ``mujoco.Renderer`` and
  gymnasium's ``render()`` return them upside down. A vertical flip alone would leave the image
  mirrored left-right (turning clockwise motion into counter-clockwise, cf. MetaWorld issue #516), so
  `Renderer` rotates such cameras' images by 180 degrees. Whether a camera is upside down is read from
  its orientation at the model's reference pose (``cam_mat0``), which is exact for cameras fixed to the
  world or in ``track`` mode (all of MetaWorld's).
* **Anti-aliasing.** At 48x48 the pick-place object and goal marker are 1-2 pixels wide and vanish
  from aliased images. Mesa's multisampling (MetaWorld's default ``offsamples=4``) is slow on a CPU
  (65 frames/s at 48x48), so `Renderer` renders at twice the size without multisampling and averages
  2x2 blocks (about 175 frames/s, same look).
* **Speed** (frames/s at 48x48 / 64x64): 175 / 155 plain, 115 / 105 with reflections, 17 / 16 with
  shadows (the shadow map is 4096x4096). Shadows and reflections are off by default.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from offrl.envs.metaworld import MetaWorldEnv

# Rendering runs at this multiple of the image size and is box-filtered down (anti-aliasing).
_SUPERSAMPLE = 2
_DISABLED = ("disable", "disabled", "off", "false", "0")
_GLFW = ("glfw", "glx", "enable", "enabled", "on", "true", "1")
# How to make headless rendering work; ends error messages here and in offrl.envs.metaworld.
RENDER_REQUIREMENTS = (
    "headless rendering needs MUJOCO_GL=egl with the Debian/Ubuntu packages libegl1 libegl-mesa0 "
    "libgl1-mesa-dri (Mesa renders on the CPU where there is no GPU), or MUJOCO_GL=osmesa with libosmesa6, "
    "set in the environment, e.g. `MUJOCO_GL=egl offrl collect ...`."
)


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """What to render: one square RGB image per state from one of the model's cameras.

    Attributes:
        size: Image height and width in pixels (>= 8). The paper setting is 48.
        camera: Name of a camera of the MuJoCo model. MetaWorld's are ``topview``, ``corner``,
            ``corner2``, ``corner3``, ``corner4``, ``behindGripper`` and ``gripperPOV``. The default
            ``corner4`` is ``corner2``'s view from closer by (the ``cam_pos`` override common in
            MetaWorld image-RL code): at 48x48 it shows pick-place's object in 4-6 pixels and its
            goal in 2-4, against 1-4 and 1-2 from ``corner2``. Checked against the model when a
            `Renderer` is built.
        shadows: Render shadows (about 10x slower with software rendering).
        reflections: Render reflections on reflective surfaces (about 1.5x slower).

    Raises:
        ValueError: If ``size`` is not an integer >= 8, ``camera`` is not a non-empty string, or
            ``shadows``/``reflections`` are not bools.
    """

    size: int = 48
    camera: str = "corner4"
    shadows: bool = False
    reflections: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer) or self.size < 8:
            raise ValueError(f"size must be an integer >= 8 (pixels), got {self.size!r}.")
        object.__setattr__(self, "size", int(self.size))
        if not isinstance(self.camera, str) or not self.camera:
            raise ValueError(f"camera must be a camera name such as 'corner2', got {self.camera!r}.")
        for name in ("shadows", "reflections"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, bool(getattr(self, name)))

    def to_info(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict (``size``, ``camera``, ``shadows``, ``reflections``)."""
        return dataclasses.asdict(self)


def gl_backend() -> str:
    """Resolves the OpenGL backend from ``MUJOCO_GL`` (call before building simulators).

    If ``MUJOCO_GL`` is unset or empty and ``mujoco`` is not imported yet, sets it to ``"egl"`` so
    that ``mujoco``'s own import-time choice agrees with `Renderer`'s.

    Returns:
        ``"egl"``, ``"osmesa"`` or ``"glfw"`` (the last needs a display).

    Raises:
        RuntimeError: If ``MUJOCO_GL`` disables rendering or has an unknown value; the message says
            what to set and which system packages provide it.
    """
    value = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not value:
        if "mujoco" not in sys.modules:
            os.environ["MUJOCO_GL"] = "egl"
        return "egl"
    if value in _DISABLED:
        raise RuntimeError(f"Rendering is disabled by MUJOCO_GL={os.environ['MUJOCO_GL']}: {RENDER_REQUIREMENTS}")
    if value in ("egl", "osmesa"):
        return value
    if value in _GLFW:
        return "glfw"
    raise RuntimeError(f"Unknown MUJOCO_GL={os.environ['MUJOCO_GL']!r}: {RENDER_REQUIREMENTS}")


_live: weakref.WeakSet[Renderer] = weakref.WeakSet()
_close_at_exit_registered = False


def _close_live_renderers() -> None:
    for renderer in list(_live):
        renderer.close()


def _track(renderer: Renderer) -> None:
    # Registered after the first GL context exists, so it runs before mujoco.egl's atexit
    # eglTerminate (atexit runs last-registered first); unclosed renderers would otherwise fail
    # noisily in their contexts' __del__ at interpreter exit.
    global _close_at_exit_registered
    if not _close_at_exit_registered:
        atexit.register(_close_live_renderers)
        _close_at_exit_registered = True
    _live.add(renderer)


def _context_class(backend: str) -> Any:
    # Imported here, not through mujoco.gl_context, whose choice was fixed when mujoco was imported.
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext


class Renderer:
    """Renders one `MetaWorldEnv`'s current state as an upright RGB image, headless.

    Holds an OpenGL context and MuJoCo render context (a few MB with shadows off, about 64 MB more
    with shadows on); release them with `close` or a ``with`` block. Rendering reads the simulator
    state and changes nothing in it, so collected states are the same with or without images. (The
    goal marker is where the goal is from the first frame on because `MetaWorldEnv.reset` puts it there.)
    Software rendering is deterministic: the same state gives bit-identical images.

    Example::

        with Renderer(env, RenderConfig(size=48, camera="corner2")) as renderer:
            env.reset()
            image = renderer.render()  # (48, 48, 3) uint8
    """

    def __init__(self, env: MetaWorldEnv, config: RenderConfig) -> None:
        """Creates the GL context and uploads the model's meshes and textures (about 0.1 s).

        Args:
            env: The simulator to render; the renderer follows its state from then on.
            config: Image size, camera, shadows and reflections.

        Raises:
            TypeError: If ``config`` is not a `RenderConfig`.
            ValueError: If the model has no camera named ``config.camera`` (the message lists them).
            RuntimeError: If ``MUJOCO_GL`` disables rendering or no OpenGL context can be created
                (the message says what to set and which packages to install).
        """
        self._gl: Any = None
        self._context: Any = None
        if not isinstance(config, RenderConfig):
            raise TypeError(f"config must be a RenderConfig, got {type(config).__name__}.")
        backend = gl_backend()
        import mujoco

        sim = env._env  # the MetaWorld env; MetaWorldEnv deliberately keeps it private
        model = sim.model
        cameras = [model.camera(i).name for i in range(model.ncam)]
        if config.camera not in cameras:
            raise ValueError(
                f"The {env.task} model has no camera {config.camera!r}; use one of: {', '.join(cameras)}."
            )
        self.config = config
        self._mujoco = mujoco
        self._env = env
        self._model = model
        self._data = sim.data
        camera_id = model.camera(config.camera).id
        # Column 1 of the camera frame is the image's up direction in world coordinates.
        self._upside_down = bool(model.cam_mat0[camera_id].reshape(3, 3)[2, 1] < 0)

        render_size = config.size * _SUPERSAMPLE
        try:
            self._gl = _context_class(backend)(render_size, render_size)
            self._gl.make_current()
            vis = model.vis
            saved = (vis.global_.offwidth, vis.global_.offheight, vis.quality.offsamples, vis.quality.shadowsize)
            # The render context takes its buffer sizes from the model; set them for the context's
            # creation only (the simulation never reads them).
            vis.global_.offwidth = vis.global_.offheight = render_size
            vis.quality.offsamples = 0
            if not config.shadows:
                vis.quality.shadowsize = 0  # no 4096x4096 shadow map
            try:
                self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
            finally:
                vis.global_.offwidth, vis.global_.offheight, vis.quality.offsamples, vis.quality.shadowsize = saved
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
            _track(self)
        except Exception as err:  # ImportError, RuntimeError, OpenGL.error.GLError, ... from the GL stack
            self.close()
            raise RuntimeError(
                f"MuJoCo could not create an OpenGL context with MUJOCO_GL={backend} "
                f"({type(err).__name__}: {err}); {RENDER_REQUIREMENTS}"
            ) from err

        self._scene = mujoco.MjvScene(model, maxgeom=10000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = config.shadows
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = config.reflections
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_id
        self._rect = mujoco.MjrRect(0, 0, render_size, render_size)
        self._pixels = np.empty((render_size, render_size, 3), np.uint8)

    def render(self) -> np.ndarray:
        """Renders the env's current state (about 6 ms at 48x48 on one CPU core, shadows off).

        Returns:
            A new upright RGB image, uint8 ``(size, size, 3)``, row 0 at the top.

        Raises:
            RuntimeError: If called after `close`.
        """
        if self._context is None:
            raise RuntimeError("render() called after close(); build a new Renderer.")
        mujoco = self._mujoco
        self._gl.make_current()
        mujoco.mjv_updateScene(
            self._model, self._data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self._context)
        s = self.config.size
        blocks = self._pixels.reshape(s, _SUPERSAMPLE, s, _SUPERSAMPLE, 3).sum(axis=(1, 3), dtype=np.uint16)
        image = ((blocks + _SUPERSAMPLE**2 // 2) // _SUPERSAMPLE**2).astype(np.uint8)
        # OpenGL returns the bottom row first: flip rows. An upside-down camera needs a 180-degree
        # rotation instead, i.e. the rows as read and the columns flipped.
        return np.ascontiguousarray(image[:, ::-1] if self._upside_down else image[::-1])

    def close(self) -> None:
        """Releases the GL and render contexts; safe to call more than once."""
        if self._context is not None:
            if self._gl is not None:
                self._gl.make_current()
            self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down the GL modules
            pass
