"""Which frames of a video to keep: black and duplicate frames out, and with ``--video-stride auto`` frames spaced
evenly in image motion rather than in time, so a capture that pauses, then pans quickly, is neither padded with
near-copies nor left with gaps.

Two passes over the video, so a long capture never sits in memory at full size: :func:`video_signatures` decodes
every frame once into a tiny grey thumbnail, :func:`select_frames` picks frame numbers from those, and
:func:`read_frames_at` decodes only the chosen frames in full.

Motion between two frames is the mean absolute difference of their blurred thumbnails (grey levels in [0, 1]):
crude, but monotone in how much of the view has changed for the pans, dollies and orbits of a hand-held capture,
and it costs nothing next to DA3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from da3_splat.errors import InputError

THUMB = (56, 32)  # (width, height) of a frame's signature
BLACK_MEAN = 0.03  # a frame darker than this on average (grey level in [0, 1]) ...
BLACK_STD = 0.02  # ... and about that flat is black (lens cap, fade, dropped frame)
DUPLICATE_MOTION = 0.004  # less motion than this to the last kept frame: a duplicate (paused or repeated frame)


@dataclass
class FrameSelection:
    """The frames kept (positions in the video, ascending) and why the others went."""

    kept: list[int]
    total: int
    black: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    thinned: int = 0  # frames dropped to reach max_frames or the stride

    def summary(self) -> str:
        """One line for the console."""
        parts = [f"kept {len(self.kept)} of {self.total} frames"]
        if self.black:
            parts.append(f"{len(self.black)} black")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate")
        if self.thinned:
            parts.append(f"{self.thinned} thinned out")
        return parts[0] + (" (dropped: " + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


def signature(rgb: np.ndarray) -> np.ndarray:
    """A frame's tiny blurred grey thumbnail, float32 in [0, 1], (32, 56)."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return cv2.GaussianBlur(small, (5, 5), 1.0)


def _open(path: Path) -> cv2.VideoCapture:
    if not Path(path).is_file():
        raise InputError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"cannot open video {path}")
    return cap


def video_signatures(path) -> np.ndarray:
    """Signatures of every decodable frame of a video, (N, 32, 56)."""
    cap = _open(path)
    sigs = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            sigs.append(signature(bgr[..., ::-1]))
    finally:
        cap.release()
    if not sigs:
        raise InputError(f"no frames could be decoded from video {path}")
    return np.stack(sigs)


def read_frames_at(path, indices: list[int]) -> list[np.ndarray]:
    """RGB uint8 frames at the given positions (ascending) of a video, decoding only those in full."""
    wanted = set(indices)
    cap = _open(path)
    frames, index = [], 0
    try:
        while len(frames) < len(wanted):
            if not cap.grab():
                break
            if index in wanted:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()
    if len(frames) != len(wanted):
        raise InputError(f"{path}: frame {index} could not be decoded on the second pass (a damaged video?)")
    return frames


def is_black(sig: np.ndarray) -> bool:
    return float(sig.mean()) < BLACK_MEAN and float(sig.std()) < BLACK_STD


def motion(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def select_frames(sigs: np.ndarray, stride: int | str = 1, max_frames: int | None = None) -> FrameSelection:
    """Frames to keep from their signatures (N, h, w).

    Black frames and duplicates (less than ``DUPLICATE_MOTION`` to the last kept frame) always go. Then either
    every ``stride``-th of the remaining frames (an int), or with ``stride="auto"`` frames evenly spaced in
    cumulative motion: ``max_frames`` of them, or when that is not given one per ~2% of view change (at most
    all). ``max_frames`` with an int stride keeps the first ones, as before. Raises InputError when nothing is
    left (an all-black video)."""
    if stride != "auto" and (not isinstance(stride, int) or stride < 1):
        raise InputError(f"frame stride must be a whole number >= 1 or 'auto', got {stride!r}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max frames must be >= 1, got {max_frames}")
    sel = FrameSelection(kept=[], total=len(sigs))
    usable = []
    for i, s in enumerate(sigs):
        if is_black(s):
            sel.black.append(i)
        elif usable and motion(s, sigs[usable[-1]]) < DUPLICATE_MOTION:
            sel.duplicates.append(i)
        else:
            usable.append(i)
    if not usable:
        raise InputError(f"all {len(sigs)} frames are black: nothing to reconstruct")
    if stride == "auto":
        steps = np.array([0.0] + [motion(sigs[a], sigs[b]) for a, b in zip(usable, usable[1:])])
        travel = np.cumsum(steps)
        n = max_frames if max_frames is not None else int(travel[-1] / 0.02) + 1
        n = max(1, min(n, len(usable)))
        if n == 1:
            picks = [0]
        else:  # the usable frame nearest each of n evenly spaced points along the motion
            marks = np.linspace(0.0, travel[-1], n)
            picks = sorted({int(np.argmin(np.abs(travel - m))) for m in marks})
        sel.kept = [usable[k] for k in picks]
    else:
        sel.kept = usable[::stride][:max_frames]
    sel.thinned = len(usable) - len(sel.kept)
    return sel
