"""Gaussian rasterization: the op (``rasterize_gaussians``) and the scene renderer registered for GaussianScene."""

from recon.renderers.gaussians.render import GaussianAux, render_gaussians

__all__ = ["GaussianAux", "render_gaussians"]
