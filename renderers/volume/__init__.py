"""Volume rendering of packed ray samples (``composite``): the compositing every field renderer shares."""

from recon.renderers.volume.composite import BACKENDS, VolumeOutput, composite

__all__ = ["BACKENDS", "VolumeOutput", "composite"]
