"""Image-folder source: formats, natural order, colour modes, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits

from live_stack.io import SourceError, open_source
from live_stack.io.folder import FolderSource, _probe, natural_key

H, W = 20, 28


def save_native(path: Path, img: np.ndarray) -> None:
    """Write a uint8/uint16 (H, W) or RGB (H, W, 3) image losslessly (JPEG: lossy)."""
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(path), bgr)
    elif suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, img, photometric="rgb" if img.ndim == 3 else "minisblack")
    else:
        data = img if img.ndim == 2 else np.moveaxis(img, 2, 0)
        fits.PrimaryHDU(data).writeto(path)


def make_folder(folder: Path, frames: np.ndarray, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name, img in zip(names, frames, strict=True):
        save_native(folder / name, img)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".fits", ".fit", ".fts", ".PNG"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("layout", ["mono", "rgb"])
def test_lossless_formats(tmp_path, make_frames, suffix, bit_depth, layout):
    frames = make_frames(3, H, W, layout=layout, bit_depth=bit_depth)
    make_folder(tmp_path / "f", frames, [f"img_{k}{suffix}" for k in range(3)])
    with open_source(tmp_path / "f") as src:
        assert isinstance(src, FolderSource)
        info = src.info
        assert (info.width, info.height, info.frames) == (W, H, 3)
        assert info.layout == layout
        assert info.dtype == frames.dtype and info.bit_depth == bit_depth
        assert src.timestamps() is None
        got = np.stack(list(src))
        np.testing.assert_array_equal(got, frames)
        np.testing.assert_array_equal(src[-2], frames[1])


def test_jpeg(tmp_path, make_frames):
    frames = make_frames(2, H, W, layout="rgb")
    frames[..., 0] = 250  # strongly coloured: stays RGB under colour="auto"
    make_folder(tmp_path / "j", frames, ["a1.jpg", "a2.jpeg"])
    with open_source(tmp_path / "j") as src:
        assert src.info.layout == "rgb" and src.info.dtype == np.uint8
        assert np.abs(src[1].astype(int) - frames[1]).mean() < 6


def test_natural_order_and_ignored_files(tmp_path, make_frames):
    names = ["frame10.png", "frame2.png", "frame1.png", "Frame3.png", "frame02b.png"]
    expected = ["frame1.png", "frame2.png", "frame02b.png", "Frame3.png", "frame10.png"]
    folder = tmp_path / "nat"
    frames = make_frames(len(names), H, W)
    make_folder(folder, frames, names)
    (folder / "notes.txt").write_text("not an image")
    (folder / "capture.ser").write_bytes(b"LUCAM-RECORDER")
    (folder / "._frame1.png").write_bytes(b"AppleDouble junk")  # hidden: ignored
    (folder / "sub.png").mkdir()  # a folder, not a file
    with FolderSource(folder) as src:
        assert [Path(f).name for f in src.files] == expected
        by_name = dict(zip(names, frames, strict=True))
        for k, name in enumerate(expected):
            np.testing.assert_array_equal(src[k], by_name[name])


def test_natural_key():
    names = ["a10", "a9", "a09x", "b1", "A2", "a1.5"]
    assert sorted(names, key=natural_key) == ["a1.5", "A2", "a9", "a09x", "a10", "b1"]


def test_colour_modes(tmp_path, make_frames):
    grey = make_frames(2, H, W)
    rgb_of_grey = np.stack([grey] * 3, axis=-1)
    make_folder(tmp_path / "g", rgb_of_grey, ["1.png", "2.png"])
    with FolderSource(tmp_path / "g") as src:  # a mono camera saved as RGB
        assert src.info.layout == "mono"
        np.testing.assert_array_equal(src[0], grey[0])
    with FolderSource(tmp_path / "g", colour="rgb") as src:
        assert src.info.layout == "rgb"
        np.testing.assert_array_equal(src[1], rgb_of_grey[1])
    colour = make_frames(2, H, W, layout="rgb", bit_depth=16)
    make_folder(tmp_path / "c", colour, ["1.tif", "2.tif"])
    with FolderSource(tmp_path / "c", colour="mono") as src:
        assert src.info.layout == "mono"
        expected = cv2.cvtColor(colour[0], cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(src[0], expected)
    with pytest.raises(ValueError, match="colour must be one of"):
        FolderSource(tmp_path / "c", colour="grey")


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_bayer_fits(tmp_path, make_frames, pattern):
    folder = tmp_path / "bayer"
    folder.mkdir()
    frames = make_frames(2, H, W, bit_depth=16)
    for k, f in enumerate(frames):
        hdu = fits.PrimaryHDU(f)
        hdu.header["BAYERPAT"] = pattern
        hdu.writeto(folder / f"raw{k}.fits")
    with FolderSource(folder) as src:
        assert src.info.layout == pattern
        np.testing.assert_array_equal(src[1], frames[1])


def test_float_and_extension_fits(tmp_path, make_frames):
    folder = tmp_path / "float"
    folder.mkdir()
    frames = make_frames(2, H, W, bit_depth=16)
    for k, f in enumerate(frames):
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU((f / 65535.0).astype(np.float32))]).writeto(
            folder / f"x{k}.fits"
        )
    with FolderSource(folder) as src:
        assert src.info.dtype == np.uint16
        np.testing.assert_array_equal(src[0], frames[0])


# -- errors -----------------------------------------------------------------------------


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no image files in this folder") as err:
        open_source(tmp_path / "e")
    assert str(tmp_path / "e") in str(err.value)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".fits", ".jpg"])
def test_different_sizes(tmp_path, make_frames, suffix):
    folder = tmp_path / "sizes"
    a = make_frames(2, H, W)
    b = make_frames(1, H + 2, W)
    make_folder(folder, np.concatenate([a[:1], a[1:]]), [f"f1{suffix}", f"f2{suffix}"])
    save_native(folder / f"f3{suffix}", b[0])
    save_native(folder / f"f4{suffix}", make_frames(1, H, W + 4)[0])
    with pytest.raises(SourceError) as err:
        FolderSource(folder)
    msg = str(err.value)
    assert f"f3{suffix}" in msg
    assert f"{W}x{H + 2}" in msg and f"{W}x{H}" in msg
    assert f"the first frame (f1{suffix})" in msg


def test_different_channels_and_depth(tmp_path, make_frames):
    folder = tmp_path / "mixed"
    make_folder(folder, make_frames(1, H, W), ["a1.png"])
    save_native(folder / "a2.png", make_frames(1, H, W, layout="rgb")[0])
    with pytest.raises(SourceError, match=r"a2.png: frame has 3 channel\(s\)"):
        FolderSource(folder)
    (folder / "a2.png").unlink()
    save_native(folder / "a2.png", make_frames(1, H, W, bit_depth=16)[0])
    with pytest.raises(SourceError, match="a2.png: frame has 16-bit samples"):
        FolderSource(folder)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(10), "not a PNG file"),
        ("bad.jpg", b"GIF89a", "not a JPEG file"),
        ("bad.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG file has no frame header"),
        ("bad.tif", b"II*\x00garbage", "cannot read TIFF"),
        ("bad.fits", b"SIMPLE  =                    T" + bytes(100), "FITS header is truncated"),
        ("bad.fits", b" " * 2880, "not a FITS file"),
    ],
)
def test_unreadable_file(tmp_path, make_frames, name, content, message):
    folder = tmp_path / "bad"
    make_folder(folder, make_frames(1, H, W), ["a.png"])
    (folder / name).write_bytes(content)
    with pytest.raises(SourceError, match=message) as err:
        FolderSource(folder)
    assert str(folder / name) in str(err.value)


def test_corrupt_pixels_named_when_read(tmp_path, make_frames):
    folder = tmp_path / "corrupt"
    make_folder(folder, make_frames(2, H, W), ["a1.png", "a2.png"])
    data = (folder / "a2.png").read_bytes()
    (folder / "a2.png").write_bytes(data[:40])  # header intact, pixels gone
    with FolderSource(folder) as src:
        src[0]
        with pytest.raises(SourceError, match="a2.png: OpenCV cannot decode"):
            src[1]


def test_not_a_folder(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(tmp_path / "nothing")


def test_unreadable_files_left_out_when_salvaging(tmp_path, make_frames):
    folder = tmp_path / "salvage"
    frames = make_frames(3, H, W)
    make_folder(folder, frames, ["a1.png", "a2.png", "a4.png"])
    (folder / "a3.png").write_bytes(b"")  # a camera driver's empty file
    (folder / "a5.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SourceError, match="a3.png: not a PNG file"):
        open_source(folder)
    with open_source(folder, salvage=True) as src:
        assert len(src) == 3
        np.testing.assert_array_equal(np.stack(list(src)), frames)
        note = src.info.metadata["salvaged"]
    assert note.startswith(f"2 of 5 image files cannot be read and are left out "
                           f"({folder / 'a3.png'}: not a PNG file")
    assert f"{folder / 'a5.tif'}: cannot read TIFF" in note


def test_files_whose_pixels_do_not_decode_are_left_out_when_salvaging(tmp_path, make_frames):
    """An intact header over pixel data that does not decode is left out at opening, like
    an unreadable header, not found later by the frame read that fails."""
    folder = tmp_path / "pixels"
    frames = make_frames(5, H, W)
    make_folder(folder, frames, ["a1.png", "a2.png", "a3.png", "a4.tif", "a5.png"])
    cut = (folder / "a2.png").read_bytes()
    (folder / "a2.png").write_bytes(cut[: len(cut) // 2])  # IHDR intact, IDAT cut
    assert cv2.imwrite(str(folder / "a4.tif"), frames[3])  # LZW, the header at the end
    tif = bytearray((folder / "a4.tif").read_bytes())
    strip = len(tif) * 6 // 10
    tif[strip : strip + 64] = bytes(64)  # a run of the compressed pixels zeroed
    (folder / "a4.tif").write_bytes(bytes(tif))
    for name in ("a2.png", "a4.tif"):
        _probe(str(folder / name))  # the headers still read
    with open_source(folder, salvage=True) as src:
        assert src.files == [str(folder / n) for n in ("a1.png", "a3.png", "a5.png")]
        np.testing.assert_array_equal(np.stack(list(src)), frames[[0, 2, 4]])
        meta = src.info.metadata
    assert meta["left_out"] == 2
    assert meta["salvaged"].startswith(
        f"2 of 5 image files cannot be read and are left out ({folder / 'a2.png'}: OpenCV "
        f"cannot decode this image (corrupt or not an image); {folder / 'a4.tif'}: cannot "
        f"read TIFF")
    with open_source(folder) as src:  # not salvaging: found when the frame is read
        with pytest.raises(SourceError, match="a2.png: OpenCV cannot decode"):
            list(src)


def test_no_readable_file_refused_even_when_salvaging(tmp_path):
    folder = tmp_path / "none"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(SourceError, match=r"none of the 1 image files can be read \("):
        FolderSource(folder, skip_unreadable=True)


def test_folder_of_lzw_tiffs(tmp_path, make_frames):
    folder = tmp_path / "lzw"
    folder.mkdir()
    frames = make_frames(3, H, W, bit_depth=16)
    for k, f in enumerate(frames):
        assert cv2.imwrite(str(folder / f"f{k}.tif"), f)  # OpenCV's default: LZW
    with open_source(folder) as src:
        np.testing.assert_array_equal(np.stack(list(src)), frames)
