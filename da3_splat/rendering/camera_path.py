"""Camera paths through or around a scene, rendering them, and writing the frames (PNGs, an MP4, a contact sheet).

Cameras are OpenCV world-to-camera matrices (N, 4, 4) with pixel intrinsics (N, 3, 3), as everywhere else.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from da3_splat.files import atomic_path
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import (
    as_homogeneous,
    matrix_to_quat_wxyz,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_matrix,
    rigid_inverse,
)
from da3_splat.rendering.projection import JACOBIAN_FRUSTUM_MARGIN

# Smallest eigenvalue (per camera) of sum(I - d d^T) over the optical axes d for their closest point to count as
# a look-at point: ~ sin^2 of their angular spread, so 0.02 asks for axes spread by about 8 degrees or more.
_MIN_AXIS_SPREAD = 0.02
# Orbit sweep when the inputs do not surround the scene: their azimuth span plus this margin, swung to and fro.
_ARC_MARGIN_DEG = 30.0
# Cameras x Gaussians per render call of render_path on CUDA (gsplat renders a batch faster than its cameras one by
# one; the torch renderer does not, so it takes one camera at a time); bounds the per-camera temporaries.
RENDER_BATCH = 1 << 22


# --------------------------------------------------------------------------------------------------
# Pose helpers (float64 inside)


def _split(w2c: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 3|4, 4) w2c -> camera-to-world rotations (N, 3, 3) and centres (N, 3), float64."""
    c2w = rigid_inverse(as_homogeneous(w2c.double()))
    return c2w[:, :3, :3], c2w[:, :3, 3]


def _compose(R_c2w: Tensor, centers: Tensor) -> Tensor:
    """Camera-to-world rotations and centres -> (N, 4, 4) w2c."""
    c2w = torch.eye(4, dtype=R_c2w.dtype).repeat(len(R_c2w), 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = R_c2w, centers
    return rigid_inverse(c2w)


def _slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of unit quaternions (4,) at fractions t (T,) -> (T, 4); q1 on q0's hemisphere."""
    dot = float((q0 * q1).sum().clamp(-1, 1))
    if dot > 0.9995:  # nearly equal: lerp is exact to rounding and avoids dividing by sin(~0)
        q = q0 + t[:, None] * (q1 - q0)
        return q / q.norm(dim=-1, keepdim=True)
    theta = math.acos(dot)
    w0 = torch.sin((1 - t) * theta) / math.sin(theta)
    w1 = torch.sin(t * theta) / math.sin(theta)
    return w0[:, None] * q0 + w1[:, None] * q1


def _catmull_rom(p0: Tensor, p1: Tensor, p2: Tensor, p3: Tensor, t: Tensor) -> Tensor:
    """Uniform Catmull-Rom segment from p1 (t = 0) to p2 (t = 1), at fractions t (T,) -> (T, 3)."""
    t = t[:, None]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)


def _look_at(eye: Tensor, target: Tensor, up: Tensor, down_hint: Tensor) -> Tensor:
    """Camera-to-world rotations (N, 3, 3), OpenCV axes, looking from ``eye`` (N, 3) at ``target`` (3,)."""
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    y = -up - (-up * z).sum(-1, keepdim=True) * z  # image down = world down, made perpendicular to the view
    flat = y.norm(dim=-1, keepdim=True) < 1e-6  # looking straight along up: borrow the input camera's down
    y = torch.where(flat, down_hint - (down_hint * z).sum(-1, keepdim=True) * z, y)
    y = y / y.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    x = torch.cross(y, z, dim=-1)  # right-handed: x = y cross z
    return torch.stack([x, y, z], dim=-1)


# --------------------------------------------------------------------------------------------------
# Paths


def interpolate_cameras(w2c: Tensor, K: Tensor, steps_per_segment: int) -> tuple[Tensor, Tensor]:
    """A smooth path through the N given cameras, in order: (N - 1) * steps + 1 cameras, key i at index i * steps.

    Rotations are slerped, centres follow a Catmull-Rom spline (end tangents by reflection), intrinsics are
    lerped. Returns (w2c (M, 4, 4), K (M, 3, 3)) in the dtype of ``w2c``."""
    if steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be >= 1, got {steps_per_segment}")
    dtype = w2c.dtype
    R, C = _split(w2c)
    K = K.double()
    n = len(R)
    if n == 1:
        return as_homogeneous(w2c).clone(), K.to(dtype)
    q = matrix_to_quat_wxyz(R)
    for i in range(1, n):  # same hemisphere as the previous key: the short way round
        if (q[i] * q[i - 1]).sum() < 0:
            q[i] = -q[i]
    P = torch.cat([2 * C[:1] - C[1:2], C, 2 * C[-1:] - C[-2:-1]])  # reflected end points
    t = torch.arange(steps_per_segment, dtype=torch.float64) / steps_per_segment
    quats, centers, Ks = [], [], []
    for i in range(n - 1):
        quats.append(_slerp(q[i], q[i + 1], t))
        centers.append(_catmull_rom(P[i], P[i + 1], P[i + 2], P[i + 3], t))
        Ks.append(K[i] + t[:, None, None] * (K[i + 1] - K[i]))
    quats.append(q[-1:])
    centers.append(C[-1:])
    Ks.append(K[-1:])
    R_path = quat_xyzw_to_matrix(quat_wxyz_to_xyzw(torch.cat(quats)))
    return _compose(R_path, torch.cat(centers)).to(dtype), torch.cat(Ks).to(dtype)


def look_at_point(w2c: Tensor) -> Tensor | None:
    """The point closest (least squares) to every camera's optical axis, or None when the axes are too close to
    parallel to pin it down (fewer than two cameras, forward-facing captures) or it lies behind a camera."""
    R, C = _split(w2c)
    d = R[:, :, 2]  # optical axes in world
    A = torch.eye(3, dtype=d.dtype) - d[:, :, None] * d[:, None, :]  # projectors onto each axis' normal plane
    M, b = A.sum(0), (A @ C[:, :, None]).sum(0)[:, 0]
    if len(C) < 2 or torch.linalg.eigvalsh(M)[0] < _MIN_AXIS_SPREAD * len(C):
        return None
    p = torch.linalg.solve(M, b)
    if ((p - C) * d).sum(-1).min() <= 0:
        return None
    return p.to(w2c.dtype)


def scene_center(w2c: Tensor, points: Tensor | None = None) -> Tensor:
    """What to orbit around: the cameras' look-at point when they converge, else the coordinate-wise median of
    ``points`` (e.g. Gaussian means; robust to floaters), else one mean camera spacing (at least 1 unit) ahead
    of the mean camera."""
    p = look_at_point(w2c)
    if p is not None:
        return p
    if points is not None and len(points) > 0:
        return points.detach().double().median(dim=0).values.cpu().to(w2c.dtype)
    R, C = _split(w2c)
    fwd = R[:, :, 2].mean(0)
    spacing = float(torch.cdist(C, C).max()) if len(C) > 1 else 0.0
    return (C.mean(0) + max(spacing, 1.0) * fwd / fwd.norm().clamp(min=1e-12)).to(w2c.dtype)


def _azimuths(horizontal: Tensor, e1: Tensor, e2: Tensor) -> Tensor:
    return torch.atan2(horizontal @ e2, horizontal @ e1)


def _circular_span(angles: Tensor) -> float:
    """Smallest arc (radians) holding every angle: 2 pi minus the largest gap between neighbours."""
    a = torch.sort(torch.remainder(angles, 2 * math.pi)).values
    gaps = torch.diff(torch.cat([a, a[:1] + 2 * math.pi]))
    return float(2 * math.pi - gaps.max())


def orbit_cameras(
    w2c: Tensor,
    K: Tensor,
    n_frames: int,
    radius_scale: float = 1.0,
    center: Tensor | None = None,
    arc_deg: float | None = None,
) -> tuple[Tensor, Tensor]:
    """``n_frames`` cameras circling ``center`` (default :func:`scene_center` of the inputs), looking at it.

    Up is the mean of the input cameras' up vectors; the circle lies at their mean height above the centre, with
    their mean horizontal distance times ``radius_scale`` as radius. ``arc_deg``: 360 for a full circle (from
    the first input's azimuth), less for a smooth to-and-fro swing around the inputs' mean azimuth (loops
    seamlessly); None: a full circle when the inputs surround the scene (span > 180 degrees), else their span
    plus 30 degrees. All frames take the first input's intrinsics. Returns (w2c (n, 4, 4), K (n, 3, 3))."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    dtype = w2c.dtype
    R, C = _split(w2c)
    c = (scene_center(w2c) if center is None else center.detach().cpu()).double()
    up = -R[:, :, 1].mean(0)  # OpenCV y points down
    up = up / up.norm().clamp(min=1e-12)
    off = C - c
    height = off @ up
    horiz = off - height[:, None] * up
    radius = float(horiz.norm(dim=-1).mean())
    if radius < 1e-6 * max(float(off.norm(dim=-1).mean()), 1e-12):  # cameras straight above: circle anyway
        radius = float(off.norm(dim=-1).mean())
    radius = max(radius, 1e-6) * radius_scale
    # Orthonormal basis of the orbit plane, e1 towards the first camera when it is off-axis.
    e1 = horiz[0] if horiz[0].norm() > 1e-9 else torch.linalg.svd(up[None]).Vh[1]
    e1 = e1 - (e1 @ up) * up
    e1 = e1 / e1.norm()
    e2 = torch.cross(up, e1, dim=-1)
    az = _azimuths(horiz, e1, e2)
    if arc_deg is None:
        span = _circular_span(az)
        arc_deg = 360.0 if span > math.pi else min(360.0, math.degrees(span) + _ARC_MARGIN_DEG)
    i = torch.arange(n_frames, dtype=torch.float64)
    if arc_deg >= 360.0:
        angles = az[0] + 2 * math.pi * (i / n_frames)
    else:
        mid = torch.atan2(torch.sin(az).mean(), torch.cos(az).mean())
        # sin(2 pi i / n) with i folded into [-n/4, n/4] (sin(pi - x) = sin x): the frames on the way back get
        # bit-identical cameras to those on the way out, which render_path renders once.
        i = torch.where(4 * i <= n_frames, i, torch.where(4 * i <= 3 * n_frames, n_frames / 2 - i, i - n_frames))
        angles = mid + math.radians(arc_deg) / 2 * torch.sin(2 * math.pi * i / n_frames)
    eye = c + height.mean() * up + radius * (torch.cos(angles)[:, None] * e1 + torch.sin(angles)[:, None] * e2)
    R_path = _look_at(eye, c, up, R[0, :, 1].expand_as(eye))
    return _compose(R_path, eye).to(dtype), K[:1].expand(n_frames, 3, 3).clone().to(dtype)


# --------------------------------------------------------------------------------------------------
# Rendering and writing


def to_uint8(colors: Tensor, channels_first: bool = False) -> np.ndarray:
    """Float colours in [0, 1], (..., 3) or with ``channels_first`` (3, H, W), -> uint8 numpy (..., 3), rounded."""
    if channels_first:
        colors = colors.permute(1, 2, 0)
    return (colors.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so the longer side is at most ``max_side`` (None or 0: as is)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def resize_intrinsics(K: Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Pixel intrinsics (..., 3, 3) of an image of ``size`` (width, height) for the same view at ``new_size``."""
    K = K.clone()
    K[..., 0, :] *= new_size[0] / size[0]
    K[..., 1, :] *= new_size[1] / size[1]
    return K


@torch.no_grad()
def reachable(gaussians: Gaussians, w2c: Tensor, K: Tensor, width: int, height: int, near_plane: float = 0.01):
    """(C, N) bool: the Gaussians that can reach each camera's image; a superset of what the renderers draw.

    Their 3-sigma radius is at most 3 sqrt(|J|_F^2 s^2 + 0.4) + 2 px, with s the largest scale and J the
    projection Jacobian (clamped to the widened frustum, as they clamp it): 0.4 px^2 covers eps2d = 0.3 and their
    0.1 floor on the eigenvalue gap, 2 px their rounding up and ours. Opacities below 1/255 are never drawn."""
    means_c = torch.einsum("cij,nj->cni", w2c[:, :3, :3], gaussians.means) + w2c[:, None, :3, 3]
    z = means_c[..., 2].clamp(min=near_plane / 2)
    xy = torch.einsum("cij,cnj->cni", K[:, :2], means_c) / z[..., None]
    f, c = K[:, [0, 1], [0, 1]][:, None], K[:, [0, 1], [2, 2]][:, None]  # (C, 1, 2)
    size = torch.tensor([width, height], dtype=z.dtype, device=z.device)
    margin = JACOBIAN_FRUSTUM_MARGIN * 0.5 * size / f
    uv = torch.maximum(torch.minimum(means_c[..., :2] / z[..., None], (size - c) / f + margin), -c / f - margin)
    jac2 = ((f * f) * (1 + uv * uv)).sum(-1) / (z * z)
    r = 3 * (jac2 * gaussians.scales.amax(-1) ** 2 + 0.4).sqrt() + 2
    inside = ((xy + r[..., None] > 0) & (xy - r[..., None] < size)).all(-1)
    return inside & (means_c[..., 2] >= near_plane * (1 - 1e-6)) & (gaussians.opacities >= 1 / 255)


@torch.no_grad()
def render_path(
    gaussians: Gaussians,
    w2c: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    progress: Callable[[int], None] | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Render unbatched ``gaussians`` at each camera: uint8 (N, H, W, 3). Runs where the Gaussians are (CUDA:
    gsplat). Repeated cameras are rendered once, in batches of ``batch_size`` (default: one on CPU, about
    RENDER_BATCH Gaussian-views on CUDA), each with only the Gaussians that can reach it (:func:`reachable`; the
    renderers would skip the others). ``progress(frames done)`` is called after each batch."""
    from da3_splat.rendering.api import render

    w2c, n = as_homogeneous(w2c), len(w2c)
    # Each distinct camera once (a swinging orbit comes back along its own cameras), in order of first use.
    key = torch.cat([w2c.flatten(1).cpu().double(), K.flatten(1).cpu().double()], 1)
    _, same = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((n,), n).scatter_reduce(0, same, torch.arange(n), "amin")  # per distinct camera: its frame
    cams = first[first < n].sort().values
    slot = torch.searchsorted(cams, first[same])  # per frame: its camera's place in cams
    dev, dtype = gaussians.means.device, gaussians.means.dtype
    bg = torch.tensor(background, dtype=dtype, device=dev)
    w2c, K = w2c[cams].to(dev, dtype), K[cams].to(dev, dtype)
    renders = np.empty((len(cams), height, width, 3), np.uint8)
    step = batch_size or (max(1, RENDER_BATCH // max(1, gaussians.num_gaussians)) if dev.type == "cuda" else 1)
    for i in range(0, len(cams), step):
        b = slice(i, min(i + step, len(cams)))
        keep = reachable(gaussians, w2c[b], K[b], width, height).any(0)
        g = gaussians if bool(keep.all()) else gaussians[keep]
        renders[b] = to_uint8(render(g, w2c[b], K[b], width, height, background=bg, mode="RGB").colors)
        if progress is not None:
            progress(int((slot < b.stop).sum()))
    return renders[slot.numpy()]


def write_frames(out_dir, frames: np.ndarray, prefix: str = "frame_") -> list[Path]:
    """Frames (N, H, W, 3) uint8 -> ``out_dir/<prefix>00001.png`` ... (atomic writes); returns the paths."""
    from da3_splat.files import write_png

    out_dir = Path(out_dir)
    return [write_png(out_dir / f"{prefix}{i + 1:05d}.png", f) for i, f in enumerate(frames)]


@dataclass
class VideoResult:
    path: Path | None  # the video written, or None
    skipped: str | None = None  # why no video was written (no encoder, encoder failure)


def find_ffmpeg() -> str | None:
    """The ffmpeg executable: imageio-ffmpeg's bundled binary when importable, else ``ffmpeg`` on PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 -- not installed, or installed without a usable binary
        return shutil.which("ffmpeg")


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights / widths by one edge row / column: yuv420p subsamples chroma 2x2."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class _EncoderFailed(Exception):
    pass


def write_video(path, frames: np.ndarray, fps: float = 30.0) -> VideoResult:
    """Frames (N, H, W, 3) uint8 -> H.264 (yuv420p) MP4 by piping raw RGB to ffmpeg; written atomically.
    Without an ffmpeg (see :func:`find_ffmpeg`), or when it fails, nothing is written and the reason returned."""
    exe = find_ffmpeg()
    if exe is None:
        return VideoResult(None, "no ffmpeg found (pip install imageio-ffmpeg, or put ffmpeg on PATH)")
    if len(frames) == 0:
        return VideoResult(None, "no frames to encode")
    frames = np.ascontiguousarray(_even(np.asarray(frames, dtype=np.uint8)))
    _, h, w, _ = frames.shape
    try:
        with atomic_path(path) as tmp:  # moved into place only when ffmpeg succeeds
            cmd = [exe, *"-y -loglevel error -f rawvideo -pix_fmt rgb24".split(), "-s", f"{w}x{h}", "-r", f"{fps:g}"]
            cmd += [*"-i - -an -c:v libx264 -pix_fmt yuv420p -crf 18 -movflags +faststart -f mp4".split(), str(tmp)]
            try:
                proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise _EncoderFailed(f"ffmpeg could not run: {e}") from None
            if proc.returncode != 0 or os.path.getsize(tmp) == 0:
                lines = proc.stderr.decode(errors="replace").strip().splitlines()
                raise _EncoderFailed(f"ffmpeg failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    except _EncoderFailed as e:
        return VideoResult(None, str(e))
    return VideoResult(Path(path))


def preview_grid(frames, cols: int, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Same-size images (N, H, W, 3) uint8 -> one contact sheet, row by row, ``cols`` per row, ``gap`` pixels of
    ``fill`` between them (and none around)."""
    frames = np.asarray(frames, dtype=np.uint8)
    n, h, w, ch = frames.shape
    if n == 0 or cols < 1:
        raise ValueError(f"need at least one frame and one column, got {n} and {cols}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    sheet = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, ch), fill, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = f
    return sheet
