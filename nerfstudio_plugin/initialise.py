"""Where the Gaussians start: DA3 feed-forward on the training views, or a classic 3DGS start (random points,
or the dataset's point cloud) for comparison.

No nerfstudio imports: inputs are plain tensors (cameras in nerfstudio's OpenGL camera-to-world convention, in
the dataset's normalised frame), outputs are :class:`da3_splat.gaussians.Gaussians`.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from da3_splat import BUNDLED_MODEL
from da3_splat.build import gaussians_from_prediction
from da3_splat.data.sampling import farthest_point_views
from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import camera_centers, opengl_c2w_to_opencv_w2c
from da3_splat.reduce import reduce_to_budget
from da3_splat.sh import RGB2SH, SH2RGB

DEFAULT_WEIGHTS = BUNDLED_MODEL
# A classic 3DGS start: opacity 0.1 everywhere (as splatfacto and the reference implementation).
INITIAL_OPACITY = 0.1
# Opacity is stored as a logit: keep it finite for splats DA3 trusts fully.
_OPACITY_RANGE = (1e-4, 1 - 1e-4)


@dataclass
class FeedForwardSettings:
    weights: str
    num_views: int  # 0: every training view
    chunk_size: int  # views per DA3 pass
    process_res: int | None  # None: the model's own
    max_gaussians: int
    conf_percentile: float
    use_gs_head: bool


def choose_views(c2w_gl: Tensor, num_views: int) -> list[int]:
    """Indices of the views DA3 sees: all (``num_views`` 0 or >= N), else a farthest-point subset over camera
    position and viewing direction; sorted, so chunks are runs of neighbouring frames."""
    n = len(c2w_gl)
    if num_views <= 0 or num_views >= n:
        return list(range(n))
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl.detach().cpu().double()).numpy()
    return sorted(farthest_point_views(w2c, num_views))


def chunks(views: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Contiguous runs of nearly equal length (no 1-view tail: DA3 aligns a chunk to its known cameras by Umeyama
    on the camera centres, which needs 3 views)."""
    if chunk_size < 1:
        raise InputError(f"the DA3 chunk size must be at least 1, got {chunk_size}")
    parts = math.ceil(len(views) / chunk_size)
    return [list(map(int, part)) for part in np.array_split(np.asarray(views), parts)] if parts else []


MERGE_AT = 8  # pixel Gaussians held before an intermediate merge, in multiples of the budget


def feedforward_gaussians(
    images: Sequence[np.ndarray],
    c2w_gl: Tensor,
    K: Tensor,
    settings: FeedForwardSettings,
    device: torch.device | str,
    load_model: Callable,
    log: Callable[[str], None] = print,
) -> Gaussians:
    """DA3 on the training views -> Gaussians in the cameras' frame, reduced to ``settings.max_gaussians``.

    images: N HxWx3 uint8 arrays; c2w_gl (N, 3|4, 4) OpenGL camera-to-world; K (N, 3, 3) in pixels of each image.
    The known cameras condition DA3 and place its Gaussians (as posed training does), and each chunk's depth
    is mapped into their frame by the inverse of DA3's pose normalisation, so the Gaussians land where the
    dataset's cameras see them. ``load_model(weights, device)`` returns a DA3.
    """
    views = choose_views(c2w_gl, settings.num_views)
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl.detach().cpu().double()).float().numpy()
    K = K.detach().cpu().float().numpy()
    model = load_model(settings.weights, device)
    use_head = settings.use_gs_head and model.has_gs_head
    if not model.has_cameras:
        raise InputError(f"{settings.weights} predicts no cameras and cannot take the dataset's; use an any-view model")
    parts, sources, n_pixels = [], set(), 0
    for run in chunks(views, settings.chunk_size):
        k = unit_spacing_scale(w2c[run])
        scaled = w2c[run].copy()
        scaled[:, :3, 3] *= k
        pred = model.infer(
            [images[i] for i in run],
            extrinsics=scaled,
            intrinsics=K[run],
            process_res=settings.process_res,
            infer_gs=use_head,
            gs_given_cameras=True,
        )
        g, source = gaussians_from_prediction(
            pred, None, settings.conf_percentile, prefer_head=use_head, device=device
        )  # merged below, over all chunks together
        parts.append(g.detach().transformed(torch.eye(3), torch.zeros(3), 1.0 / k))
        sources.add(source)
        n_pixels += g.num_gaussians
        if sum(p.num_gaussians for p in parts) > MERGE_AT * settings.max_gaussians:
            # Bound memory on long captures: merge what the chunks gave so far (to twice the budget, so that
            # the final merge still sees every part at a finer grain), instead of holding every pixel to the end.
            parts = [reduce_to_budget(Gaussians.cat(parts), max_gaussians=2 * settings.max_gaussians)]
    del model
    gc.collect()
    g = reduce_to_budget(Gaussians.cat(parts), max_gaussians=settings.max_gaussians)
    log(
        f"DA3 ({', '.join(sorted(sources))}) on {len(views)} of {len(images)} training views: "
        f"{n_pixels:,} pixel Gaussians -> {g.num_gaussians:,}"
    )
    return g


def unit_spacing_scale(w2c: np.ndarray) -> float:
    """Factor that brings the median camera distance to the first camera to 1. DA3 divides conditioning poses by
    that median but clamps it at 0.1 (it expects metres); nerfstudio squeezes scenes into [-1, 1], where
    neighbouring frames are often closer than 0.1, and the clamp would then hand the network poses at the wrong
    scale. Scaling first makes the conditioning independent of the dataset's units."""
    centres = camera_centers(torch.from_numpy(np.asarray(w2c, np.float64)))
    median = float(torch.median((centres - centres[0]).norm(dim=-1)))
    return 1.0 / median if median > 1e-9 else 1.0


def knn_mean_distance(points: Tensor, k: int = 3, block: int = 4096) -> Tensor:
    """Mean distance of each point to its k nearest other points (N,), in blocks so memory stays O(block * N)."""
    n = len(points)
    if n <= 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    out = []
    for start in range(0, n, block):
        d = torch.cdist(points[start : start + block], points)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(1))  # [:, 0] is the point itself
    return torch.cat(out)


def classic_gaussians(points: Tensor, rgb: Tensor | None, sh_degree: int, seed: int = 0) -> Gaussians:
    """The usual 3DGS start from points: isotropic scale = mean distance to the 3 nearest neighbours, random
    rotation, opacity 0.1, colour from ``rgb`` (N, 3) in [0, 1] or random."""
    gen = torch.Generator().manual_seed(seed)
    points = points.float()
    n = len(points)
    scale = knn_mean_distance(points).clamp(min=1e-7)
    quats = torch.randn(n, 4, generator=gen)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    colors = rgb.float() if rgb is not None else torch.rand(n, 3, generator=gen)
    sh = torch.zeros(n, (sh_degree + 1) ** 2, 3)
    sh[:, 0] = RGB2SH(colors)
    return Gaussians(points, quats, scale[:, None].expand(n, 3).contiguous(), torch.full((n,), INITIAL_OPACITY), sh)


def random_points(num: int, extent: float, seed: int = 0) -> Tensor:
    """``num`` points uniform in a cube of side ``extent`` centred at the origin (the normalised scene's centre)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num, 3, generator=gen) - 0.5) * extent


def to_splatfacto(g: Gaussians, sh_degree: int) -> dict[str, Tensor]:
    """Gaussians -> splatfacto's raw parameters for a model of ``sh_degree`` (bands padded or cut). With degree 0
    splatfacto keeps logit(rgb) in ``features_dc`` instead of the SH coefficient; that is honoured here."""
    g = g.with_sh_degree(sh_degree)
    g.opacities = g.opacities.clamp(*_OPACITY_RANGE)
    params = g.to_splatfacto_params()
    if sh_degree == 0:
        rgb = SH2RGB(params["features_dc"]).clamp(1e-4, 1 - 1e-4)
        params["features_dc"] = torch.logit(rgb)
    return {k: v.detach().float().contiguous() for k, v in params.items()}


def load_da3(weights: str, device):
    """A DA3 from any source ``da3-splat predict --model`` takes (random:CONFIG included, with its warning)."""
    from rich.console import Console

    from da3_splat.runtime import load_model

    return load_model(weights, str(torch.device(device)), Console(stderr=True))
