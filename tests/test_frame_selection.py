"""Video frame selection: black and duplicate frames dropped, motion-spaced frames with stride "auto", and the
two-pass video reading (signatures of every frame, then only the chosen frames in full)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from da3_splat.errors import InputError
from da3_splat.frame_selection import (
    read_frames_at,
    select_frames,
    signature,
    video_signatures,
)


def _pan(n: int, speeds: list[float] | None = None, h: int = 96, w: int = 128) -> list[np.ndarray]:
    """Frames of a textured strip seen through a moving window: frame i is shifted by the cumulative speed."""
    rng = np.random.default_rng(0)
    strip = cv2.GaussianBlur(rng.integers(0, 256, (h, w * 8, 3), dtype=np.uint8), (7, 7), 2.0)
    speeds = speeds if speeds is not None else [4.0] * n
    x = np.concatenate([[0.0], np.cumsum(speeds[: n - 1])])
    return [np.ascontiguousarray(strip[:, int(round(s)) : int(round(s)) + w]) for s in x]


def _sigs(frames):
    return np.stack([signature(f) for f in frames])


def test_black_and_duplicate_frames_are_dropped():
    frames = _pan(10)
    frames.insert(3, np.zeros_like(frames[0]))  # a black frame
    frames.insert(6, frames[5].copy())  # an exact repeat
    frames.insert(7, frames[5].copy())
    sel = select_frames(_sigs(frames))
    assert sel.black == [3] and sel.duplicates == [6, 7]
    assert sel.kept == [i for i in range(len(frames)) if i not in (3, 6, 7)]
    assert "2 duplicate" in sel.summary() and "1 black" in sel.summary() and "kept 10 of 13" in sel.summary()


def test_integer_stride_and_max_frames_keep_their_meaning():
    sigs = _sigs(_pan(20))
    assert select_frames(sigs, stride=3).kept == list(range(0, 20, 3))
    assert select_frames(sigs, stride=2, max_frames=4).kept == [0, 2, 4, 6]
    assert select_frames(sigs).kept == list(range(20))


def test_auto_stride_spaces_frames_by_motion():
    # 20 frames standing almost still (1 px per frame), then 20 panning fast (12 px per frame)
    frames = _pan(40, [1.0] * 20 + [12.0] * 19)
    sel = select_frames(_sigs(frames), stride="auto", max_frames=10)
    assert len(sel.kept) == 10 and sel.kept[0] == 0 and sel.kept[-1] == 39
    slow = sum(k < 20 for k in sel.kept)
    assert slow <= 3, sel.kept  # most kept frames fall where the view changes, not where it stands still
    gaps = np.diff(sel.kept)
    assert gaps[-3:].max() <= 3 and gaps[:2].min() >= 4


def test_auto_stride_without_a_budget_keeps_motion_not_time():
    still = select_frames(_sigs(_pan(30, [0.5] * 29)), stride="auto")
    moving = select_frames(_sigs(_pan(30, [8.0] * 29)), stride="auto")
    assert len(still.kept) < len(moving.kept)


def test_bad_values_and_an_all_black_video():
    sigs = _sigs(_pan(5))
    for stride in (0, -1, "fast", 1.5):
        with pytest.raises(InputError, match="stride"):
            select_frames(sigs, stride=stride)
    with pytest.raises(InputError, match="max frames"):
        select_frames(sigs, max_frames=0)
    black = _sigs([np.zeros((96, 128, 3), np.uint8)] * 4)
    with pytest.raises(InputError, match="all 4 frames are black"):
        select_frames(black)


def test_two_pass_video_reading(tmp_path):
    frames = _pan(12)
    frames[4] = np.zeros_like(frames[4])
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    assert writer.isOpened(), "OpenCV cannot encode mp4v here"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    sigs = video_signatures(path)
    assert sigs.shape == (12, 32, 56)
    sel = select_frames(sigs)
    assert sel.black == [4]
    got = read_frames_at(path, sel.kept)
    assert len(got) == 11 and got[0].shape == (96, 128, 3) and got[0].dtype == np.uint8
    # lossy codec: the decoded frames are close to what was written, frame for frame
    for k, img in zip(sel.kept, got):
        assert np.abs(img.astype(int) - frames[k].astype(int)).mean() < 12
    with pytest.raises(InputError, match="not found"):
        video_signatures(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 1024)
    with pytest.raises(InputError):
        video_signatures(tmp_path / "junk.mp4")
