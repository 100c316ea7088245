"""Image I/O, sRGB transfer functions, and the frame -> :class:`Split` assembly shared by every loader.

* :func:`read_image` returns pixel data *as stored* (no EXIF rotation: calibrations such as COLMAP's are made on
  the stored pixel grid): 8/16-bit PNG and JPG scaled to [0, 1]; ``.hdr`` (Radiance RGBE, own reader) and
  ``.exr`` (through the ``OpenEXR`` package) as linear float.
* :func:`write_png`, :func:`write_hdr` (Radiance RGBE) and :func:`write_exr` write atomically (temp file in the
  same folder, then ``os.replace``).
* :class:`Frame` is one parsed, not yet decoded view; :func:`frames_to_split` decodes, checks, undistorts (or
  keeps the lens distortion in the cameras) and downscales a list of them into a :class:`~recon.data.dataset.Split`.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon.cameras import Cameras
from recon.color import linear_to_srgb, srgb_to_linear
from recon.data.dataset import Split
from recon.data.undistort import Distortion, undistort_planar, undistortion_grid
from recon.fileio import atomic_write_bytes

__all__ = [
    "read_image", "write_png", "write_hdr", "write_exr", "image_size", "srgb_to_linear", "linear_to_srgb",
    "Frame", "resolve_image_path", "drop_missing", "holdout_every", "frames_to_split", "resolve_background",
    "DISTORTION_MODES", "check_distortion_mode",
]

SKIP_HINT = "pass --skip-missing-images (config skip_missing_images: true) to drop frames without images"
DISTORTION_MODES = ("undistort", "keep")


# ----------------------------------------------------------------------------------------------- reading

def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 ``[H, W, C]`` (C = 1, 2, 3 or 4; gray, gray+alpha, RGB, RGBA).

    LDR files are scaled to [0, 1] by their bit depth and stay in their stored (usually sRGB) encoding;
    ``.hdr`` / ``.exr`` are linear float. Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file when it cannot be decoded; ``RuntimeError`` saying what to install when no EXR backend exists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".hdr":
            return _read_hdr(path)
        if suffix == ".exr":
            return _read_exr(path)
        if suffix == ".png" and _png_header(path)[:2] in ((16, 2), (16, 4), (16, 6)):
            return _read_png16(path)  # Pillow truncates 16-bit color PNGs to 8 bits
        return _read_pillow(path)
    except (ValueError, RuntimeError) as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"cannot decode image {path}: {e}") from e
    except (OSError, SyntaxError, IndexError, KeyError, zlib.error, struct.error) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image, reading only its header where Pillow can."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError):
        arr = read_image(path)
        return arr.shape[1], arr.shape[0]


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB" if mode != "1" else "L")
        elif mode == "PA":
            im = im.convert("RGBA")
        arr = np.asarray(im)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind in "ui":  # "I;16" and friends: 16-bit gray
        out = arr.astype(np.float32) / 65535.0
    else:
        out = arr.astype(np.float32)
    return out[..., None] if out.ndim == 2 else out


def _png_header(path: Path) -> tuple[int, int, int]:
    """(bit depth, color type, interlace) from the IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (bad signature or IHDR)")
    return head[24], head[25], head[28]


def _read_png16(path: Path) -> np.ndarray:
    """Minimal decoder for non-interlaced 16-bit gray+alpha / RGB / RGBA PNGs."""
    data = path.read_bytes()
    pos, idat = 8, []
    width = height = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, _, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if interlace:
        raise ValueError("interlaced 16-bit PNGs are not supported")
    channels = {2: 3, 4: 2, 6: 4}[ctype]
    bpp, stride = 2 * channels, 2 * channels * width
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size != height * (stride + 1):
        raise ValueError(f"truncated PNG data: {raw.size} bytes, expected {height * (stride + 1)}")
    raw = raw.reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for j in range(height):
        kind, line = raw[j, 0], raw[j, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per byte lane, mod 256
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (3, 4):  # Average / Paeth depend on the decoded left pixel: sequential along the row
            cur = line.copy()
            for i in range(0, stride, bpp):
                left = cur[i - bpp:i] if i else np.zeros(bpp, np.int32)
                up = prev[i:i + bpp]
                if kind == 3:
                    pred = (left + up) >> 1
                else:
                    ul = prev[i - bpp:i] if i else np.zeros(bpp, np.int32)
                    p = left + up - ul
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
                cur[i:i + bpp] = (cur[i:i + bpp] + pred) & 0xFF
        else:
            raise ValueError(f"bad PNG filter type {kind} in row {j}")
        out[j] = cur
        prev = cur
    arr = out.view(">u2").reshape(height, width, channels)
    return arr.astype(np.float32) / 65535.0


def _read_hdr(path: Path) -> np.ndarray:
    """Radiance RGBE (.hdr): flat or new-style run-length encoded scanlines, ``-Y H +X W`` orientation."""
    data = path.read_bytes()
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise ValueError("not a Radiance HDR file (missing '#?RADIANCE' / '#?RGBE' signature)")
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError("truncated HDR header")
    header = data[:end].decode("ascii", "replace")
    if "FORMAT=" in header and "32-bit_rle_rgbe" not in header:
        raise ValueError("only FORMAT=32-bit_rle_rgbe is supported")
    nl = data.find(b"\n", end + 2)
    m = re.fullmatch(r"-Y (\d+) \+X (\d+)", data[end + 2:nl].decode("ascii", "replace").strip())
    if not m:
        raise ValueError(f"unsupported HDR resolution line {data[end + 2:nl]!r} (expected '-Y H +X W')")
    height, width = int(m.group(1)), int(m.group(2))
    buf, pos = memoryview(data), nl + 1
    out = np.empty((height, width, 4), np.uint8)
    for j in range(height):
        if 8 <= width < 32768 and data[pos:pos + 2] == b"\x02\x02" and (data[pos + 2] << 8 | data[pos + 3]) == width:
            pos += 4
            for c in range(4):
                row, i = out[j, :, c], 0
                while i < width:
                    if pos >= len(data):
                        raise ValueError(f"truncated HDR data in scanline {j}")
                    count = data[pos]
                    if count > 128:
                        count -= 128
                        row[i:i + count] = data[pos + 1]
                        pos += 2
                    else:
                        if count == 0 or i + count > width:
                            raise ValueError(f"corrupt HDR run in scanline {j}")
                        row[i:i + count] = np.frombuffer(buf[pos + 1:pos + 1 + count], np.uint8)
                        pos += 1 + count
                    i += count
        else:  # flat scanline
            if pos + 4 * width > len(data):
                raise ValueError(f"truncated HDR data in scanline {j}")
            out[j] = np.frombuffer(buf[pos:pos + 4 * width], np.uint8).reshape(width, 4)
            pos += 4 * width
    exponent = out[..., 3:].astype(np.int32)
    scale = np.where(exponent > 0, np.ldexp(1.0, exponent - 136), 0.0).astype(np.float32)
    return out[..., :3].astype(np.float32) * scale


def _import_openexr():
    try:
        import OpenEXR
    except ImportError as e:
        raise RuntimeError("reading or writing .exr files needs the OpenEXR package: `pip install OpenEXR`") from e
    return OpenEXR


def _read_exr(path: Path) -> np.ndarray:
    """OpenEXR (first part) as float32 ``[H, W, C]``: R,G,B(,A) -> C = 3 (4); a lone Y or other channel -> C = 1."""
    try:
        OpenEXR = _import_openexr()
    except RuntimeError as e:
        raise RuntimeError(f"cannot read {path}: {e}") from e
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = {name: np.asarray(ch.pixels) for name, ch in f.parts[0].channels.items()}
    except (RuntimeError, OSError, TypeError) as e:
        raise ValueError(f"cannot decode EXR {path}: {e}") from e
    if all(c in channels for c in "RGB"):
        names = ["R", "G", "B"] + (["A"] if "A" in channels else [])
    elif "Y" in channels or len(channels) == 1:
        names = ["Y" if "Y" in channels else next(iter(channels))]
    else:
        raise ValueError(f"EXR {path} has channels {sorted(channels)}; expected R,G,B(,A) or a single Y channel")
    planes = [channels[n] for n in names]
    if any(pl.ndim != 2 or pl.shape != planes[0].shape for pl in planes):
        raise ValueError(f"EXR {path}: channels {names} are subsampled or differ in size; full-resolution expected")
    return np.stack(planes, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- writing

def write_png(path: str | os.PathLike, image) -> None:
    """Write ``image [H, W, 3|4]`` (or ``[H, W]`` / ``[H, W, 1]``) float in [0, 1] (clipped) as an 8-bit PNG.

    Accepts numpy arrays or torch tensors; uint8 input is written unchanged. Atomic: a temp file in the same
    folder is renamed over ``path``, so readers never see a half-written file.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"image must have shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def _hdr_array(image, name: str) -> np.ndarray:
    """``image`` (numpy / torch) as float ``[H, W, C]``; ``ValueError`` naming ``name`` for other ranks."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: image must be numeric [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got "
                         f"{arr.shape} {arr.dtype}")
    return arr


def write_hdr(path: str | os.PathLike, image, *, rle: bool = True) -> None:
    """Write linear ``image [H, W, 3]`` (or gray ``[H, W]`` / ``[H, W, 1]``, replicated; numpy or torch) as Radiance
    RGBE (``.hdr``), run-length encoded scanlines when ``rle`` and 8 <= W < 32768, flat otherwise.

    Each pixel stores a shared exponent and three 8-bit mantissas rounded to nearest, so a channel round-trips
    through :func:`read_image` within 1/256 of the pixel's largest channel (~0.4 %); values below ~1e-38 of it
    become 0. Atomic (temp file + ``os.replace``). Raises ``ValueError`` naming ``path`` for a bad shape, or for
    negative / non-finite values, which RGBE cannot store.
    """
    arr = _hdr_array(image, str(path)).astype(np.float64)
    if arr.shape[-1] == 4:
        raise ValueError(f"{path}: RGBE stores RGB only, got an RGBA image {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    bad = int((~np.isfinite(arr)).sum() + (arr < 0).sum())
    if bad:
        raise ValueError(f"{path}: {bad} negative or non-finite values; RGBE stores finite values >= 0 only")
    height, width = arr.shape[:2]
    peak = arr.max(axis=-1)
    _, exp = np.frexp(peak)  # peak = m * 2^exp, m in [0.5, 1): mantissa bytes in [128, 256)
    exp = np.clip(exp, -127, 127)
    mant = np.rint(arr * np.ldexp(1.0, 8 - exp)[..., None])
    over = mant.max(axis=-1) > 255  # rounding carried to 256: one more exponent step
    exp = np.where(over, exp + 1, exp)
    if exp.max(initial=0) > 127:
        raise ValueError(f"{path}: values up to {peak.max():.4g} exceed the RGBE range (< 2^127)")
    mant = np.where(over[..., None], np.rint(arr * np.ldexp(1.0, 8 - exp)[..., None]), mant)
    rgbe = np.empty((height, width, 4), np.uint8)
    rgbe[..., :3] = np.clip(mant, 0, 255)
    rgbe[..., 3] = exp + 128
    rgbe[(peak < 2.0 ** -127) | (rgbe[..., :3].max(axis=-1) == 0)] = 0
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode("ascii")
    if rle and 8 <= width < 32768:
        body = b"".join(_rle_scanline(row) for row in rgbe)
    else:
        body = rgbe.tobytes()
    atomic_write_bytes(Path(path), header + body)


def _rle_scanline(row: np.ndarray) -> bytes:
    """New-style RLE of one ``[W, 4]`` uint8 scanline: per channel, runs of >= 4 equal bytes as (128 + n, value)
    packets (n <= 127), everything between as literal packets of <= 128 bytes."""
    width = row.shape[0]
    out = [bytes([2, 2, width >> 8, width & 0xFF])]
    for c in range(4):
        line = row[:, c]
        starts = np.flatnonzero(np.concatenate(([True], line[1:] != line[:-1])))
        lengths = np.diff(np.append(starts, width))
        pos = 0
        for start, length in zip(starts[lengths >= 4].tolist(), lengths[lengths >= 4].tolist()):
            for lit in range(pos, start, 128):
                chunk = line[lit:min(lit + 128, start)]
                out.append(bytes([len(chunk)]) + chunk.tobytes())
            value = int(line[start])
            for k in range(0, length, 127):
                out.append(bytes([128 + min(127, length - k), value]))
            pos = start + length
        for lit in range(pos, width, 128):
            chunk = line[lit:min(lit + 128, width)]
            out.append(bytes([len(chunk)]) + chunk.tobytes())
    return b"".join(out)


def write_exr(path: str | os.PathLike, image, *, half: bool = False) -> None:
    """Write linear ``image [H, W, 3]`` (RGB), ``[H, W, 4]`` (RGBA) or ``[H, W]`` / ``[H, W, 1]`` (Y) as OpenEXR,
    float32 channels or float16 when ``half``, ZIP-compressed, through the ``OpenEXR`` package.

    Values are stored as given (NaN / Inf included). Atomic (encoded in memory, then temp file + ``os.replace``).
    Raises ``ValueError`` naming ``path`` for a bad shape or, when ``half``, finite values beyond float16's range
    (65504); ``RuntimeError`` saying ``pip install OpenEXR`` when the package is missing.
    """
    arr = _hdr_array(image, str(path)).astype(np.float32)
    if half:
        finite = arr[np.isfinite(arr)]
        if finite.size and np.abs(finite).max() > 65504.0:
            raise ValueError(f"{path}: values up to {np.abs(finite).max():.4g} overflow half floats (max 65504); "
                             "write with half=False")
        arr = arr.astype(np.float16)
    OpenEXR = _import_openexr()
    names = {1: "Y", 3: "RGB", 4: "RGBA"}[arr.shape[-1]]
    channels = {n: np.ascontiguousarray(arr[..., i]) for i, n in enumerate(names)}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    buf = io.BytesIO()
    with OpenEXR.File(header, channels) as f:
        f.write(buf)
    atomic_write_bytes(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------------------------- frames

@dataclass
class Frame:
    """One parsed view, before its image is decoded.

    Attributes:
        name: unique frame name (file stem).
        image_path: absolute path of the image file.
        world_to_cam: ``[4, 4]`` float64 OpenCV world-to-camera.
        K: ``[3, 3]`` float64 intrinsics of the stored (distorted) image; undistortion keeps them.
        width, height: the image size the metadata promises.
        distortion: the lens distortion (removed at load, or kept in the cameras), or None for a pinhole.
        source: where the metadata came from, for error messages (e.g. "transforms.json frame 3").
    """

    name: str
    image_path: Path
    world_to_cam: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    distortion: Distortion | None = None
    source: str = ""


def resolve_image_path(base: Path, file_path: str, extensions: tuple[str, ...] = (".png",)) -> Path:
    """``base / file_path``; a path without an extension gets the first of ``extensions`` that exists."""
    path = (base / file_path).resolve()
    if path.suffix == "" or path.suffix.lower() not in {".png", ".jpg", ".jpeg", ".exr", ".hdr", ".bmp", ".tif",
                                                        ".tiff", ".webp"}:
        for ext in extensions:
            candidate = path.with_name(path.name + ext)
            if candidate.exists():
                return candidate
        return path.with_name(path.name + extensions[0])
    return path


def drop_missing(frames: list[Frame], *, skip: bool, root: Path, source: str) -> list[Frame]:
    """Frames whose image exists. Missing images raise ``FileNotFoundError`` (listing the first few and the count)
    unless ``skip``, in which case they are dropped with one warning."""
    missing = [f for f in frames if not f.image_path.is_file()]
    if not missing:
        return frames
    names = [_rel(f.image_path, root) for f in missing]
    listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if not skip:
        raise FileNotFoundError(f"{len(missing)} of {len(frames)} images listed in {source} are missing: {listed}; "
                                f"{SKIP_HINT}")
    warnings.warn(f"dropping {len(missing)} of {len(frames)} frames of {source} whose images are missing: {listed}",
                  stacklevel=3)
    return [f for f in frames if f.image_path.is_file()]


def holdout_every(frames: list, test_every: int) -> tuple[list, list]:
    """``(train, test)``: items at indices 0, n, 2n, ... go to test, the rest to train (order kept)."""
    if int(test_every) < 2:
        raise ValueError(f"test_every must be an integer >= 2, got {test_every}")
    test = frames[::test_every]
    train = [f for i, f in enumerate(frames) if i % test_every != 0]
    return train, test


def resolve_background(background, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """``None`` -> ``default``; "white" / "black"; or three floats in [0, 1]."""
    if background is None:
        return tuple(float(c) for c in default)
    if isinstance(background, str):
        named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
        if background not in named:
            raise ValueError(f"background must be 'white', 'black' or 3 floats in [0, 1], got {background!r}")
        return named[background]
    values = tuple(float(c) for c in background)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"background must be 3 floats in [0, 1], got {background!r}")
    return values


def check_distortion_mode(distortion) -> str:
    """``distortion`` if it is one of :data:`DISTORTION_MODES`, else ``ValueError`` naming the argument."""
    if not isinstance(distortion, str) or distortion not in DISTORTION_MODES:
        raise ValueError(f"distortion must be 'undistort' or 'keep', got {distortion!r}")
    return distortion


def _split_cameras(frames: list[Frame], width: int, height: int, keep: bool) -> Cameras:
    """float64 :class:`Cameras` of ``frames``: pinhole, or (``keep``) the frames' shared lens model.

    Pinhole frames in a split of OpenCV frames get zero coefficients (exactly a pinhole) so that the split has one
    model; pinhole frames beside fisheye frames, or OpenCV beside fisheye frames, raise ``ValueError``.
    """
    w2c = torch.stack([f.world_to_cam for f in frames])
    K = torch.stack([f.K for f in frames])
    if not keep:
        return Cameras(w2c, K, width, height)
    lenses = [f.distortion.camera_model() if f.distortion is not None else ("pinhole", ()) for f in frames]
    found = {m for m, _ in lenses}
    if found == {"pinhole"}:
        return Cameras(w2c, K, width, height)
    if len(found - {"pinhole"}) > 1 or ("fisheye" in found and len(found) > 1):
        examples = {}
        for f, (m, _) in zip(frames, lenses):
            examples.setdefault(m, f.source or f.name)
        listed = ", ".join(f"{m} ({where})" for m, where in sorted(examples.items()))
        raise ValueError(f"distortion='keep' needs one lens model per split, got {listed}; fisheye cannot be mixed "
                         "with other models (zero fisheye coefficients are the equidistant lens, not a pinhole); "
                         "pass distortion='undistort'")
    (model,) = found - {"pinhole"}
    zeros = (0.0,) * (5 if model == "opencv" else 4)
    coeffs = torch.tensor([c if m != "pinhole" else zeros for m, c in lenses], dtype=torch.float64)
    return Cameras(w2c, K, width, height, model, coeffs)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# The per-image pipeline below works on channel-first planes [4, H, W] (contiguous ops on large photos) and in
# numpy where it can: many small torch ops each enter an OpenMP parallel region, which is slow when the cores are
# oversubscribed (e.g. by a concurrent compile or training run).

def _to_planar_rgba(arr: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` gray / gray+alpha / RGB / RGBA -> ``[4, H, W]`` float32 clipped to [0, 1]."""
    C = arr.shape[-1]
    out = np.ones((4,) + arr.shape[:2], np.float32)
    for c in range(3):
        out[c] = arr[..., c if C >= 3 else 0]
    if C in (2, 4):
        out[3] = arr[..., -1]
    return np.clip(out, 0.0, 1.0, out=out)


def _downscale(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average planar ``[4, H, W]`` to ``[4, height, width]``, premultiplied so that the color of transparent
    pixels does not bleed into the edges. Integer ratios average n x n blocks; others use Pillow's BOX filter
    (exact area weights per output pixel)."""
    H, W = rgba.shape[1:]
    opaque = bool((rgba[3] == 1).all())
    premul = rgba
    if not opaque:
        premul = rgba.copy()
        premul[:3] *= premul[3]
    if H % height == 0 and W % width == 0 and H // height == W // width:
        n = H // height
        out = premul.reshape(4, height, n, width, n).sum(axis=4).sum(axis=2) / np.float32(n * n)
    else:
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(premul[c])).resize((width, height), Image.BOX))
                        for c in range(4)]).astype(np.float32)
    if opaque:
        return out
    a = out[3]
    out[:3] = np.divide(out[:3], a, out=np.zeros_like(out[:3]), where=a > 1e-6)
    return np.clip(out, 0.0, 1.0, out=out)


def frames_to_split(frames: list[Frame], downscale: int = 1, root: Path | None = None,
                    grids: dict | None = None, distortion: str = "undistort") -> Split:
    """Decode, check, undistort and downscale ``frames`` into a :class:`Split`.

    ``distortion="undistort"`` resamples distorted images to a pinhole with the same K (alpha 0 where no source
    pixel exists); ``"keep"`` leaves the pixels as stored and gives the cameras the frames' lens model
    (:meth:`Distortion.camera_model`; see :func:`_split_cameras` for splits that mix models).
    All frames must share one image size. Images come back ``[C, H, W, 4]`` float32 in [0, 1], cameras float32
    with ``K`` scaled by :meth:`Cameras.scaled` (which keeps the distortion coefficients: they act on normalized
    coordinates). Raises ``ValueError`` naming the image on a decode failure or when its size differs from the
    metadata, and for an unknown ``distortion``. ``grids`` optionally shares undistortion grids between calls (a
    dict the caller owns, e.g. one per dataset so that train and test reuse the grids of a shared camera).
    """
    if isinstance(downscale, bool) or int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    downscale = int(downscale)
    keep = check_distortion_mode(distortion) == "keep"
    root = root or Path(".")
    sizes = {(f.width, f.height) for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"frames of one split must share an image size, got {sorted(sizes)} "
                         f"(e.g. {frames[0].source}: {frames[0].width}x{frames[0].height})")
    if not frames:
        return Split(Cameras(torch.zeros(0, 4, 4), torch.zeros(0, 3, 3), 1, 1), torch.zeros(0, 1, 1, 4), [])
    W, H = frames[0].width, frames[0].height
    cams = _split_cameras(frames, W, H, keep)
    cams = cams.scaled(1.0 / downscale) if downscale > 1 else cams
    images = np.empty((len(frames), cams.height, cams.width, 4), np.float32)
    grids = {} if grids is None else grids
    for i, f in enumerate(frames):
        arr = read_image(f.image_path)
        if arr.shape[:2] != (H, W):
            raise ValueError(f"image {_rel(f.image_path, root)} is {arr.shape[1]}x{arr.shape[0]} but {f.source} "
                             f"says w x h = {W}x{H}")
        rgba = _to_planar_rgba(arr)
        if not keep and f.distortion is not None and not f.distortion.is_identity:
            key = (tuple(f.K.flatten().tolist()), f.distortion)
            if key not in grids:
                grid, valid = undistortion_grid(f.K, f.distortion, W, H)
                grids[key] = (grid, valid.to(torch.float32))
            rgba = undistort_planar(torch.from_numpy(rgba), grids[key]).numpy()
        images[i] = (_downscale(rgba, cams.width, cams.height) if downscale > 1 else rgba).transpose(1, 2, 0)
    return Split(cams.to(dtype=torch.float32), torch.from_numpy(images), [f.name for f in frames])
