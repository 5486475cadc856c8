"""open_source dispatch and the shared SourceInfo / FrameSource behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.io import FrameSource, SourceError, SourceInfo, open_source
from live_stack.io.folder import FolderSource
from live_stack.io.images import write_image
from live_stack.io.ser import SerReader, SerWriter

H, W = 16, 24


def test_dispatch(tmp_path, make_frames):
    frames = make_frames(2, H, W)
    with SerWriter(tmp_path / "CAPTURE.SER", width=W, height=H) as sw:  # any case
        sw.write_frames(list(frames))
    (tmp_path / "img").mkdir()
    write_image(tmp_path / "img" / "a.png", np.zeros((H, W), np.float32))
    with open_source(tmp_path / "CAPTURE.SER") as src:
        assert isinstance(src, SerReader) and isinstance(src, FrameSource)
        assert "SerReader" in repr(src) and f"{W}x{H}" in repr(src)
    with open_source(str(tmp_path / "img")) as src:
        assert isinstance(src, FolderSource)
    with open_source(tmp_path / "CAPTURE.SER", strict=False) as src:
        assert len(src) == 2


@pytest.mark.parametrize("name", ["video.gif", "frames.npy", "noext"])
def test_unknown_type(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(SourceError, match="unknown file type") as err:
        open_source(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "gone.avi")


def test_source_info_checks():
    good = {
        "path": "x",
        "width": W,
        "height": H,
        "frames": 3,
        "bit_depth": 12,
        "dtype": np.uint16,
        "layout": "RGGB",
    }
    info = SourceInfo(**good, metadata={"observer": "Ann"})
    assert info.shape == (H, W) and info.dtype == np.dtype(np.uint16)
    assert SourceInfo(**(good | {"layout": "rgb"})).shape == (H, W, 3)
    with pytest.raises(TypeError):
        info.metadata["observer"] = "Bob"  # read-only
    with pytest.raises(AttributeError):
        info.width = 5  # frozen
    for field, value in [
        ("width", 0),
        ("height", -2),
        ("frames", -1),
        ("dtype", np.float32),
        ("bit_depth", 17),
        ("bit_depth", 0),
        ("layout", "BGR"),
    ]:
        with pytest.raises(ValueError, match=f"SourceInfo.{field}"):
            SourceInfo(**(good | {field: value}))
    with pytest.raises(ValueError, match="SourceInfo.bit_depth"):
        SourceInfo(**(good | {"dtype": np.uint8}))  # 12 bits do not fit uint8
