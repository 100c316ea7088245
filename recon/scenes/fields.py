"""The field scenes (tri-plane radiance fields, neural SDFs): their classes by state ``kind``, and loading."""

from __future__ import annotations

import json

import torch

__all__ = ["FIELD_KINDS", "field_from_state", "init_field", "is_field", "load_field_file", "read_state", "restore"]

FIELD_KINDS = ("triplane", "sdf")


def _classes() -> dict:
    from recon.scenes.sdf import NeuralSDF
    from recon.scenes.triplane import TriPlaneField

    return {"triplane": TriPlaneField, "sdf": NeuralSDF}


def is_field(scene) -> bool:
    """Whether ``scene`` is a field (rendered by volume rendering; meshes come from marching cubes)."""
    return isinstance(scene, tuple(_classes().values()))


def field_from_state(state, source: str):
    """The field of a ``{"header", "tensors"}`` state, by its header's kind. Raises ``ValueError`` naming
    ``source`` for anything else."""
    try:
        kind = json.loads(state["header"]).get("kind")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{source}: not a recon field state ({type(err).__name__})") from err
    if kind not in FIELD_KINDS:
        raise ValueError(f"{source}: scene kind is {kind!r}, expected one of {list(FIELD_KINDS)}")
    return _classes()[kind].from_state(state, source=source)


def load_field_file(path) -> object:
    """A field from an ``exports/field.pt`` file (tensors only: ``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or not a tensor file: one line naming it
        raise ValueError(f"{path}: not a recon field state ({type(err).__name__})") from err
    return field_from_state(state, str(path))


def read_state(state, source: str, kind: str, what: str) -> tuple[dict, dict]:
    """``(header, tensors)`` of a field state of ``kind``; ``ValueError`` naming ``source`` otherwise."""
    try:
        header = json.loads(state["header"])
        tensors = state["tensors"]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"{source}: not a recon {what} state ({type(err).__name__}: {err})") from err
    if header.get("kind") != kind:
        raise ValueError(f"{source}: scene kind is {header.get('kind')!r}, expected {kind!r}")
    return header, tensors


def restore(build, tensors: dict, source: str, what: str):
    """``build()`` a field and load ``tensors`` into it, refusing NaN / Inf; errors name ``source``."""
    try:
        field = build()
        field.load_state_dict(tensors)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"{source}: invalid {what} state: {str(err).splitlines()[0]}") from err
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: {what} tensor {name!r} contains NaN or Inf")
    return field


def init_field(field, lo, hi, resolutions, channels: int, hidden: int, samples: int) -> None:
    """Check and store what every field module has: its box (``lo``, ``hi`` buffers, ``[3]`` each, ``lo < hi``),
    plane resolutions, channels, MLP width and samples per ray. Raises ``ValueError`` naming the bad value."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if lo.shape != (3,) or hi.shape != (3,) or not bool((hi > lo).all()):
        raise ValueError(f"the field's box needs lo < hi, both [3], got {lo.tolist()} and {hi.tolist()}")
    if not resolutions or min(resolutions) < 2 or channels < 1 or hidden < 1 or samples < 1:
        raise ValueError(f"resolutions must be >= 2, channels, hidden and samples >= 1, got {resolutions}, "
                         f"{channels}, {hidden}, {samples}")
    field.register_buffer("lo", lo.clone())
    field.register_buffer("hi", hi.clone())
    field.resolutions, field.channels, field.hidden = tuple(int(r) for r in resolutions), int(channels), int(hidden)
    field.samples = int(samples)
