"""Image I/O and sRGB transfer functions."""

import struct
import zlib

import numpy as np
import pytest
import torch

from recon.data.io import _downscale, image_size, linear_to_srgb, read_image, srgb_to_linear, write_png


def _encode_png16(path, arr: np.ndarray) -> None:
    """16-bit PNG encoder for tests: row j uses filter type j % 5, so the decoder's five filters all run."""
    h, w, c = arr.shape
    ctype = {2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    rows = arr.astype(">u2").reshape(h, w * bpp // 2).view(np.uint8).astype(np.int32)
    out = []
    for j in range(h):
        cur, up = rows[j], rows[j - 1] if j else np.zeros_like(rows[0])
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        p = left + up - ul
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = [np.zeros_like(cur), left, up, (left + up) >> 1, paeth][j % 5]
        out.append(bytes([j % 5]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(out)))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png16_all_filters(tmp_path, channels):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(11, 7, channels), dtype=np.uint16)
    _encode_png16(tmp_path / "a.png", arr)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (11, 7, channels)
    np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16), arr)


def test_png16_gray_via_pillow(tmp_path):
    from PIL import Image

    arr = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    np.testing.assert_allclose(out[..., 0], arr / 65535.0, atol=1e-7)


@pytest.mark.parametrize("channels", [3, 4])
def test_write_read_png_roundtrip(tmp_path, channels):
    rng = np.random.default_rng(1)
    img = rng.random((9, 12, channels)).astype(np.float32)
    write_png(tmp_path / "x.png", img)
    out = read_image(tmp_path / "x.png")
    assert out.shape == img.shape
    assert np.abs(out - img).max() <= 0.5 / 255 + 1e-6  # 8-bit quantization, round to nearest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temp file left behind
    assert image_size(tmp_path / "x.png") == (12, 9)


def test_write_png_torch_gray_and_clipping(tmp_path):
    write_png(tmp_path / "g.png", torch.tensor([[-1.0, 0.5, 2.0]])[..., None])
    out = read_image(tmp_path / "g.png")
    assert out.shape == (1, 3, 1)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 128 / 255, 1.0])
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "bad.png", np.zeros((2, 2, 5)))


def test_write_png_is_atomic_on_failure(tmp_path, monkeypatch):
    from PIL import Image

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    (tmp_path / "keep.png").write_bytes(b"old")
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "keep.png", np.zeros((2, 2, 3)))
    assert (tmp_path / "keep.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_read_jpg(test_data):
    img = read_image(test_data / "fox" / "images" / "0001.jpg")
    assert img.shape == (1920, 1080, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(tmp_path / "broken.jpg")


def _rgbe_header(h, w):
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode()


def test_read_hdr_flat_and_rle(tmp_path):
    # flat scanlines (width < 8 cannot be run-length encoded): value = mantissa * 2^(exponent - 136)
    px = np.array([[[128, 64, 32, 129], [255, 0, 1, 140], [10, 10, 10, 0]]], np.uint8)
    (tmp_path / "flat.hdr").write_bytes(_rgbe_header(1, 3) + px.tobytes())
    out = read_image(tmp_path / "flat.hdr")
    np.testing.assert_allclose(out[0, 0], np.array([128, 64, 32]) * 2.0 ** (129 - 136))
    np.testing.assert_allclose(out[0, 1], np.array([255, 0, 1]) * 2.0 ** (140 - 136))
    np.testing.assert_array_equal(out[0, 2], 0.0)  # exponent 0 means black
    # one RLE scanline of width 10: per channel a run of 6 then 4 literals
    w = 10
    line = b"\x02\x02\x00\x0a"
    expected = np.zeros((w, 4), np.uint8)
    for c in range(4):
        lits = bytes([c + 1, c + 2, c + 3, c + 4])
        line += bytes([128 + 6, 50 + c]) + bytes([4]) + lits
        expected[:6, c], expected[6:, c] = 50 + c, list(lits)
    (tmp_path / "rle.hdr").write_bytes(_rgbe_header(1, w) + line)
    out = read_image(tmp_path / "rle.hdr")
    ref = expected[:, :3].astype(np.float64) * np.ldexp(1.0, expected[:, 3:].astype(np.int64) - 136)
    np.testing.assert_allclose(out[0], ref, rtol=1e-6)
    (tmp_path / "cut.hdr").write_bytes(_rgbe_header(2, w) + line)
    with pytest.raises(ValueError, match="cut.hdr.*truncated"):
        read_image(tmp_path / "cut.hdr")


def test_read_real_hdr(test_data):
    env = read_image(test_data / "synthetic" / "bob_field" / "envmaps" / "field.hdr")
    assert env.shape == (512, 1024, 3) and env.dtype == np.float32
    assert np.isfinite(env).all() and env.min() >= 0
    # the README scales every map to a mean pixel luminance of 0.5
    lum = 0.2126 * env[..., 0] + 0.7152 * env[..., 1] + 0.0722 * env[..., 2]
    assert 0.3 < lum.mean() < 0.7


def test_read_exr_or_clear_error(test_data):
    path = test_data / "synthetic" / "bob_field" / "envmaps" / "field.exr"
    try:
        env = read_image(path)
    except RuntimeError as e:
        assert "EXR" in str(e) and "install" in str(e).lower() and "field.exr" in str(e)
    else:
        assert env.shape[:2] == (512, 1024)


def test_srgb_known_values_and_roundtrip():
    assert srgb_to_linear(np.float64(0.5)) == pytest.approx(((0.5 + 0.055) / 1.055) ** 2.4, abs=1e-12)
    assert srgb_to_linear(np.float64(0.04)) == pytest.approx(0.04 / 12.92, abs=1e-12)
    assert linear_to_srgb(np.float64(0.001)) == pytest.approx(0.01292, abs=1e-12)
    assert linear_to_srgb(np.float64(1.0)) == pytest.approx(1.0, abs=1e-12)
    x = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    # the two branches meet at the threshold (continuity of the exact formulas, to ~1e-7)
    assert abs(0.04045 / 12.92 - ((0.04045 + 0.055) / 1.055) ** 2.4) < 1e-7
    xt = torch.linspace(0, 1, 101, dtype=torch.float64, requires_grad=True)
    y = srgb_to_linear(xt)
    torch.testing.assert_close(y.detach(), torch.from_numpy(srgb_to_linear(xt.detach().numpy())))
    linear_to_srgb(y).sum().backward()
    assert torch.isfinite(xt.grad).all()
    assert srgb_to_linear(torch.ones(2, dtype=torch.float32)).dtype == torch.float32
    assert srgb_to_linear(np.ones(2, np.float32)).dtype == np.float32


def test_downscale_premultiplied_and_non_integer():
    img = np.zeros((10, 10, 4), np.float32)
    img[:, :5] = [1.0, 0.0, 0.0, 0.0]  # transparent red
    img[:, 5:] = [0.0, 1.0, 0.0, 1.0]  # opaque green
    out = _downscale(img.transpose(2, 0, 1), 5, 5).transpose(1, 2, 0)  # factor 2: block averages
    assert out.shape == (5, 5, 4) and out.dtype == np.float32
    visible = out[..., 3] > 0
    assert np.all(out[..., 0][visible] == 0) and np.allclose(out[..., 1][visible], 1.0)
    np.testing.assert_allclose(out[:, 2, 3], 0.5)  # the mixed column: half coverage
    out = _downscale(img.transpose(2, 0, 1), 3, 3).transpose(1, 2, 0)  # 10 / 3: Pillow BOX, exact area weights
    assert out.shape == (3, 3, 4)
    assert abs(out[..., 3].mean() - 0.5) < 1e-5
    assert np.all(out[..., 0] < 1e-6)
    opaque = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    opaque[..., 3] = 1
    out = _downscale(opaque.transpose(2, 0, 1), 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], opaque[:4, :4].mean(axis=(0, 1)), rtol=1e-6)
