"""recon: differentiable 3D reconstruction and inverse rendering."""

__version__ = "0.1.0"
