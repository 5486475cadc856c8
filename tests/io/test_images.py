"""write_image / read_image: round trips with metadata, file structure, errors."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from astropy.io import fits

from live_stack.io import SourceError
from live_stack.io.images import (
    FITS_JSON_KEYWORD,
    PNG_TEXT_KEYWORD,
    read_image,
    read_native,
    write_image,
)

H, W = 18, 26
#: Largest error of a [0, 1] value stored in 16 bits and read back.
U16_STEP = 0.5 / 65535 + 1e-7

METADATA = {
    "observer": "Ann O'Neil",  # a quote and a space
    "frames": np.int64(240),  # numpy scalars are converted
    "psnr": np.float32(31.5),
    "ap_centres": np.array([[10, 12], [40, 52]]),
    "stats": {"dropped": {"blur": 3, "size": 1}, "timings_ms": {"align": 1.25}},
    "a long key needing HIERARCH": "yes",
    "a key far too long for any FITS card, even HIERARCH": 1,
    "unicode": "Mond über Köln",
    "long_text": "seeing " * 30,
    "flag": True,
    "none": None,
}
#: What read_image returns for METADATA: the JSON form.
EXPECTED = json.loads(json.dumps(METADATA, default=lambda v: v.tolist()))


def sample_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, body, crc) of every chunk of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        chunks.append((kind, body, crc))
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png", ".fits", ".fit", ".fts", ".TIF"])
@pytest.mark.parametrize("shape", [(H, W), (H, W, 3)], ids=["mono", "rgb"])
def test_round_trip(tmp_path, suffix, shape):
    img = sample_image(shape)
    path = tmp_path / f"stack{suffix}"
    write_image(path, img, metadata=METADATA)
    back, meta = read_image(path)
    assert back.dtype == np.float32 and back.shape == shape
    assert np.abs(back - img).max() <= U16_STEP
    assert meta == EXPECTED
    native, meta2 = read_native(path)
    assert native.dtype == np.uint16
    np.testing.assert_array_equal(native, np.rint(img * 65535).astype(np.uint16))
    assert meta2 == EXPECTED


@pytest.mark.parametrize("suffix", [".tif", ".png", ".fits"])
def test_without_metadata_and_clipping(tmp_path, suffix):
    img = np.array([[-0.5, 0.0, 0.25, 1.0, 7.0, np.nan, np.inf, -np.inf]] * 8, np.float64)
    path = tmp_path / f"clip{suffix}"
    write_image(path, img)
    back, meta = read_image(path)
    assert meta == {}
    expected = np.array([0, 0, 0.25, 1, 1, 0, 1, 0], np.float32)
    np.testing.assert_allclose(back[0], expected, atol=U16_STEP)


def test_png_structure(tmp_path):
    path = tmp_path / "s.png"
    img = sample_image((H, W, 3))
    img[..., 0] = 1.0  # red
    img[..., 2] = 0.0
    write_image(path, img, metadata={"k": 1})
    chunks = png_chunks(path.read_bytes())
    kinds = [c[0] for c in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds[-2] == b"tEXt"  # inserted right before IEND
    for kind, body, crc in chunks:
        assert zlib.crc32(kind + body) == crc
    key, _, text = chunks[-2][1].partition(b"\0")
    assert key.decode() == PNG_TEXT_KEYWORD and json.loads(text) == {"k": 1}
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height, depth, colour) == (W, H, 16, 2)
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # a valid PNG for other readers
    assert bgr.dtype == np.uint16
    assert bgr[..., 2].min() == 65535 and bgr[..., 0].max() == 0  # stored as R, G, B


def test_tiff_structure(tmp_path):
    path = tmp_path / "s.tif"
    write_image(path, sample_image((H, W, 3)), metadata={"observer": "Ann"})
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.dtype == np.uint16 and page.shape == (H, W, 3)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert json.loads(page.description) == {"observer": "Ann"}


def test_fits_structure(tmp_path):
    path = tmp_path / "s.fits"
    img = sample_image((H, W, 3))
    write_image(path, img, metadata=METADATA)
    with fits.open(path) as hdul:
        header = hdul[0].header
        data = hdul[0].data
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
        assert data.shape == (3, H, W) and data.dtype == np.uint16
        np.testing.assert_array_equal(data[0], np.rint(img[..., 0] * 65535))
        assert header["OBSERVER"] == "Ann O'Neil"  # short keys directly
        assert header["FRAMES"] == 240
        assert header["FLAG"] is True
        assert header["a long key needing HIERARCH"] == "yes"
        assert not any("far too long" in k for k in header)  # only in the JSON
        # A long string goes on CONTINUE cards (FITS drops trailing spaces; the JSON is exact).
        assert header["long_text"] == ("seeing " * 30).rstrip()
        assert "unicode" not in header  # not ASCII: only in the JSON
        assert json.loads(header[FITS_JSON_KEYWORD]) == EXPECTED


def test_foreign_files_metadata(tmp_path):
    """Files not written by write_image: 8-bit data, header cards, plain descriptions."""
    grey = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 256
    tifffile.imwrite(tmp_path / "a.tif", grey.astype(np.uint8), description="plain words")
    back, meta = read_image(tmp_path / "a.tif")
    np.testing.assert_allclose(back, grey / 255, atol=1e-6)
    assert meta == {"description": "plain words"}

    hdu = fits.PrimaryHDU(grey.astype(np.float32) / 255)
    hdu.header["EXPTIME"] = 0.004
    hdu.header["INSTRUME"] = "ZWO ASI290MM"
    hdu.writeto(tmp_path / "b.fits")
    back, meta = read_image(tmp_path / "b.fits")
    np.testing.assert_allclose(back, grey / 255, atol=1e-6)
    assert meta["EXPTIME"] == 0.004 and meta["INSTRUME"] == "ZWO ASI290MM"
    assert "BITPIX" not in meta and "NAXIS1" not in meta

    assert cv2.imwrite(str(tmp_path / "c.jpg"), np.full((H, W, 3), (0, 0, 255), np.uint8))
    back, meta = read_image(tmp_path / "c.jpg")
    assert back.shape == (H, W, 3) and meta == {}
    assert back[..., 0].mean() > 0.9 and back[..., 2].mean() < 0.1  # red, in RGB order

    assert cv2.imwrite(str(tmp_path / "d.png"), grey.astype(np.uint8))
    back, _ = read_image(tmp_path / "d.png")
    np.testing.assert_allclose(back, grey / 255, atol=1e-6)


def test_float_fits_outside_range(tmp_path):
    fits.PrimaryHDU(np.full((H, W), 70000.0, np.float32)).writeto(tmp_path / "big.fits")
    with pytest.raises(SourceError, match="spans 70000..70000"):
        read_image(tmp_path / "big.fits")
    fits.PrimaryHDU(np.full((H, W), 1000.0, np.float32)).writeto(tmp_path / "adu.fits")
    back, _ = read_image(tmp_path / "adu.fits")
    np.testing.assert_allclose(back, 1000 / 65535)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, sample_image((H, W), seed=1))
    write_image(path, sample_image((H, W), seed=2))  # replaces the file
    back, _ = read_image(path)
    assert np.abs(back - sample_image((H, W), seed=2)).max() <= U16_STEP
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    write_image(tmp_path / "plain.tif", sample_image((H, W)), atomic=False)
    assert (tmp_path / "plain.tif").is_file()
    with pytest.raises(OSError):
        write_image(tmp_path / "missing" / "x.png", sample_image((H, W)))
    with pytest.raises(ValueError, match="metadata"):
        write_image(path, sample_image((H, W)), metadata={"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "plain.tif"]


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((H, W), np.uint16), {}, "image must be a float array"),
        (np.zeros((H, W, 4), np.float32), {}, r"image must have shape \(H, W\) or \(H, W, 3\)"),
        (np.zeros((0, W), np.float32), {}, "image is empty"),
        ([[0.5]], {}, "image must be a numpy array"),
        (np.zeros((H, W), np.float32), {"metadata": [1, 2]}, "metadata must be a dict"),
        (np.zeros((H, W), np.float32), {"metadata": {"x": {1, 2}}}, "cannot be stored as JSON"),
    ],
)
def test_write_rejects_bad_input(tmp_path, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_image(tmp_path / "x.tif", image, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".exr", ""])
def test_write_unknown_extension(tmp_path, suffix):
    with pytest.raises(ValueError, match="unsupported extension") as err:
        write_image(tmp_path / f"x{suffix}", np.zeros((H, W), np.float32))
    assert repr(suffix or "(none)") in str(err.value)


def test_read_errors(tmp_path):
    with pytest.raises(ValueError, match="unsupported extension '.bmp'"):
        read_image(tmp_path / "x.bmp")
    with pytest.raises(SourceError, match="no such file"):
        read_image(tmp_path / "x.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(SourceError, match="junk.png: OpenCV cannot decode"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE  = nonsense")
    with pytest.raises(SourceError, match="junk.fits: cannot read FITS"):
        read_image(tmp_path / "junk.fits")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SourceError, match="junk.tif: cannot read TIFF"):
        read_image(tmp_path / "junk.tif")


def test_png_bad_text_chunk(tmp_path):
    path = tmp_path / "s.png"
    write_image(path, sample_image((H, W)), metadata={"k": 1})
    data = bytearray(path.read_bytes())
    at = data.index(b"tEXt") + 4 + len(PNG_TEXT_KEYWORD) + 1
    data[at] ^= 0x01  # '{' -> 'z': the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="tEXt chunk at byte .* has a bad CRC"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".fits"])
def test_empty_file_is_a_source_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(SourceError) as err:
        read_native(path)
    assert str(path) in str(err.value)
    if suffix in (".png", ".jpg"):
        assert str(err.value) == f"{path}: the file is empty (0 bytes)"


@pytest.mark.parametrize("compression", ["lzw", "deflate", "packbits"])
@pytest.mark.parametrize(("shape", "dtype"), [((H, W), np.uint8), ((H, W), np.uint16),
                                              ((H, W, 3), np.uint16)])
def test_compressed_tiff(tmp_path, compression, shape, dtype):
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    image = (rng.random(shape) * top).astype(dtype)
    image[: H // 2] = image[0, 0]  # runs, so that every codec actually shrinks something
    path = tmp_path / f"c_{compression}.tif"
    tifffile.imwrite(path, image, compression=compression,
                     photometric="rgb" if image.ndim == 3 else "minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression.name.lower().startswith(compression[:4])
    arr, _ = read_native(path)
    np.testing.assert_array_equal(arr, image)


def test_opencv_lzw_tiff(tmp_path):
    """OpenCV writes LZW TIFF by default: the most common compressed TIFF there is."""
    image = (np.arange(H * W * 3).reshape(H, W, 3) % 251).astype(np.uint8)
    path = tmp_path / "cv.tif"
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.LZW
    arr, _ = read_native(path)
    np.testing.assert_array_equal(arr, image)
