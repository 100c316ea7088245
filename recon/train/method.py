"""What a training method plugs into the one :class:`~recon.train.trainer.Trainer` loop (DESIGN.md section 6).

The loop owns the data, the data order, random states, checkpoints, signals, logging, the progress bar and the
evaluation; a :class:`Method` supplies its scene, optimizer groups, one optimization step (loss included), its
checkpoint entries, the scene to evaluate and its exports. Gaussians, meshes and PBR meshes are methods alike
(``recon.train.gaussians``, ``recon.train.mesh``, ``recon.train.mesh_pbr``); :data:`METHOD_CLASSES` maps the
method names of ``recon.train.config.METHODS`` to them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recon.renderers import RenderSettings

__all__ = ["Method", "build_method"]


class Method:
    """Base class of training methods. The loop calls, in order: :meth:`render_settings`, :meth:`setup` (with
    the checkpoint state when resuming), then :meth:`step` once per optimization step (the loop has already
    advanced :attr:`step`), :meth:`state` at every checkpoint, :meth:`eval_scene` / :meth:`evaluate_extra` at
    evaluation and :meth:`export` at the end.

    The loop's shared state is read through the properties below (``self.data``, ``self.step``, ...), so a method
    never keeps copies of it.
    """

    name = ""
    state_keys: frozenset[str] = frozenset()
    """Checkpoint entries the method writes besides ``scene`` and the loop's own."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.cfg = loop.cfg

    # --- what a method supplies ---------------------------------------------------------------------------
    def render_settings(self) -> RenderSettings:
        """Settings for training renders and evaluation."""
        return RenderSettings(backend=self.cfg.backend)

    def setup(self, state: dict | None, source: str) -> None:
        """Build the scene and the optimizer; from ``state`` (a checkpoint named ``source``) when resuming."""
        raise NotImplementedError

    def state(self) -> dict:
        """Checkpoint entries: ``scene`` (a renderable scene's ``to_state()``) plus :attr:`state_keys`."""
        raise NotImplementedError

    def parameters(self) -> dict[str, torch.Tensor]:
        """The optimized tensors by name (checked for NaN/Inf before every checkpoint)."""
        raise NotImplementedError

    def size_stats(self) -> dict:
        """Scene size for logs and the summary (e.g. ``{"num_faces": F}``)."""
        return {}

    def step(self) -> dict:
        """One optimization step; returns at least ``{"loss", "psnr"}``."""
        raise NotImplementedError

    def eval_scene(self):
        """The scene that evaluation renders and checkpoints store."""
        raise NotImplementedError

    def export(self) -> Path:
        """Write the run's exports; returns the main file."""
        raise NotImplementedError

    def evaluate_extra(self, summary: dict, final: bool) -> None:
        """Add method-specific metrics to an evaluation ``summary`` (``final``: the end-of-run evaluation)."""

    # --- the loop's shared state --------------------------------------------------------------------------
    @property
    def step_index(self) -> int:
        return self.loop.step

    @property
    def data(self):
        return self.loop.data

    @property
    def device(self) -> torch.device:
        return self.loop.device

    @property
    def mask(self) -> bool:
        """Whether image alpha marks valid pixels (photos) rather than coverage."""
        return self.loop.mask

    @property
    def generator(self) -> torch.Generator:
        return self.loop.generator

    @property
    def train_cams(self):
        return self.loop.train_cams

    @property
    def train_images(self) -> torch.Tensor:
        return self.loop.train_images

    @property
    def eval_background(self) -> torch.Tensor:
        return self.loop.eval_background

    @property
    def settings(self) -> RenderSettings:
        return self.loop.settings

    @property
    def extent(self) -> float:
        return self.loop.extent

    @property
    def run_dir(self) -> Path:
        return self.loop.run_dir

    def next_index(self) -> int:
        """The next training view in the loop's (checkpointed) data order."""
        return self.loop.next_index()

    def check_loss(self, loss: torch.Tensor) -> None:
        self.loop.check_loss(loss)

    def check_finite(self) -> None:
        self.loop.check_finite()


def build_method(name: str, loop) -> Method:
    """The :class:`Method` registered as ``name`` (``gaussians``, ``gaussians-pbr``, ``mesh``, ``mesh-pbr``,
    ``sdf-pbr``, ``triplane``, ``sdf``), bound to ``loop``."""
    from recon.train.gaussians import GaussianMethod
    from recon.train.gaussians_pbr import GaussianPBRMethod
    from recon.train.mesh import MeshMethod
    from recon.train.mesh_pbr import MeshPBRMethod, SDFPBRMethod
    from recon.train.sdf import SDFMethod
    from recon.train.triplane import TriPlaneMethod

    methods = (GaussianMethod, GaussianPBRMethod, MeshMethod, MeshPBRMethod, SDFPBRMethod, TriPlaneMethod, SDFMethod)
    classes = {c.name: c for c in methods}
    if name not in classes:
        raise ValueError(f"unknown training method {name!r}; expected one of {sorted(classes)}")
    return classes[name](loop)
