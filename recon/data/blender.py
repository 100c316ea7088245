"""NeRF-synthetic / Blender loader: ``transforms_{train,test,val}.json`` with RGBA PNGs.

``camera_angle_x`` gives ``fx = fy = 0.5 W / tan(0.5 camera_angle_x)`` and the principal point is the image
center ``(W / 2, H / 2)`` (``fl_x, fl_y, cx, cy, w, h`` at the top level are honored when present; W, H default to
the first image's size). ``camera_angle_x`` must be a number in (0, pi) radians and ``fl_x, fl_y`` > 0, else a
``ValueError`` names the file and field (a negative angle would silently mirror the camera). ``file_path``
without an extension means ``.png``. ``transform_matrix`` is an OpenGL camera-to-world. Frames keep the file's
order.
"""

from __future__ import annotations

from pathlib import Path

from recon.data.dataset import SceneData
from recon.data.io import drop_missing, frames_to_split, holdout_every, resolve_background
from recon.data.ngp import read_frames, read_transforms

__all__ = ["load_blender"]


def load_blender(root: str | Path, *, downscale: int = 1, test_every: int = 8, skip_missing_images: bool = False,
                 background=None, distortion: str = "undistort") -> SceneData:
    """Load a Blender-format dataset folder.

    Test split: ``transforms_test.json``; else ``transforms_val.json``; else indices 0, ``test_every``, ... of the
    train list. ``background`` defaults to white (the NeRF-synthetic convention); the images keep straight alpha
    and ``SceneData.background`` records the color for the trainer to composite over. ``distortion`` applies to
    frames with ngp-style distortion keys, as in :func:`~recon.data.ngp.load_ngp`.
    """
    root = Path(root).resolve()
    train_path = root / "transforms_train.json"
    if not train_path.is_file():
        raise FileNotFoundError(f"{root}: not a Blender dataset (no transforms_train.json)")

    def frames_of(path: Path):
        frames = read_frames(path, read_transforms(path), extensions=(".png",))
        return drop_missing(frames, skip=skip_missing_images, root=root, source=str(path))

    train = frames_of(train_path)
    test_path = next((p for p in (root / "transforms_test.json", root / "transforms_val.json") if p.is_file()), None)
    if test_path is not None:
        test = frames_of(test_path)
    else:
        train, test = holdout_every(train, test_every)
    grids: dict = {}  # undistortion grids shared by the two splits
    return SceneData(root=root, format="blender", train=frames_to_split(train, downscale, root, grids, distortion),
                     test=frames_to_split(test, downscale, root, grids, distortion),
                     background=resolve_background(background, (1.0, 1.0, 1.0)))
