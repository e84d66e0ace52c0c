"""Tests for da3_splat.model.ray_pose (DA3's ray-based camera solver).

Parity tests run the official package's `_process_ray_pose_estimation` as an oracle with the same seed: the
exact solver must match it bit for bit, the fast default within 1e-4 relative error (max|a-b| / max|b|).
"""

from __future__ import annotations

import math

import pytest
import torch

from da3_splat.model import ray_pose
from da3_splat.model.ray_pose import cameras_from_rays
from tests.oracle import prepare, rel_err

NET_H, NET_W = 280, 504  # network input size the ray maps belong to
TOL = 1e-4  # fast vs exact solver, relative


def _official_solver():
    """The oracle's ray-pose step; stubs `evo` only if the real one is absent."""
    prepare()
    addict = pytest.importorskip("addict")
    da3 = pytest.importorskip("depth_anything_3.model.da3")

    def solve(ray, conf, height, width):
        out = addict.Dict(ray=ray.clone(), ray_conf=conf.clone())  # the oracle zeroes conf in place
        out = da3.DepthAnything3Net._process_ray_pose_estimation(None, out, height, width)
        return out.extrinsics, out.intrinsics

    return solve


@pytest.fixture(scope="module")
def official():
    return _official_solver()


def _rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) -> (..., 3, 3)."""
    angle = axis_angle.norm(dim=-1, keepdim=True).unsqueeze(-1)
    k = axis_angle / axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    zero = torch.zeros_like(k[..., 0])
    skew = torch.stack(
        [zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero], dim=-1
    ).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype).expand_as(skew)
    return eye + angle.sin() * skew + (1 - angle.cos()) * skew @ skew


def _random_cameras(b, s, gen, centred=True, max_angle=0.5):
    """Ground truth c2w rotation (B,S,3,3), centre (B,S,3), K (B,S,3,3) in network-input pixels (float64)."""
    axis = torch.randn(b, s, 3, generator=gen, dtype=torch.float64)
    angle = torch.rand(b, s, 1, generator=gen, dtype=torch.float64) * max_angle
    rot = _rotation(axis / axis.norm(dim=-1, keepdim=True) * angle)
    centre = torch.randn(b, s, 3, generator=gen, dtype=torch.float64)
    fov_w = math.radians(50) + torch.rand(b, s, generator=gen, dtype=torch.float64) * math.radians(40)
    fx = NET_W / 2 / torch.tan(fov_w / 2)
    fy = fx * (0.9 + 0.2 * torch.rand(b, s, generator=gen, dtype=torch.float64))
    k = torch.zeros(b, s, 3, 3, dtype=torch.float64)
    k[..., 0, 0], k[..., 1, 1], k[..., 2, 2] = fx, fy, 1.0
    k[..., 0, 2], k[..., 1, 2] = NET_W / 2, NET_H / 2
    if not centred:
        k[..., :2, 2] += 20 * torch.randn(b, s, 2, generator=gen, dtype=torch.float64)
    return rot, centre, k


def _rays(rot, centre, k, h, w, gen, noise=0.0):
    """Ray map (B,S,h,w,6): world directions R K^-1 [u, v, 1] at ray-map pixel centres, arbitrary
    positive scale per pixel, plus optional Gaussian noise on directions and centres."""
    b, s = rot.shape[:2]
    u = (torch.arange(w, dtype=torch.float64) + 0.5) * NET_W / w
    v = (torch.arange(h, dtype=torch.float64) + 0.5) * NET_H / h
    pix = torch.stack([*torch.meshgrid(u, v, indexing="xy"), torch.ones(h, w, dtype=torch.float64)], -1)
    cam = torch.einsum("bsij,hwj->bshwi", torch.linalg.inv(k), pix)
    dirs = torch.einsum("bsij,bshwj->bshwi", rot, cam)
    dirs = dirs * (0.5 + torch.rand(b, s, h, w, 1, generator=gen, dtype=torch.float64))
    origins = centre[:, :, None, None].expand(b, s, h, w, 3)
    ray = torch.cat([dirs, origins], dim=-1)
    ray = ray + noise * torch.randn(ray.shape, generator=gen, dtype=torch.float64)
    return ray.float()


def _confidence(shape, gen):
    return torch.randn(shape, generator=gen).exp() + 1.0  # like the head's exp + 1 activation


def _seeded(solve, ray, conf, seed):
    """solve(ray, conf, NET_H, NET_W) after torch.manual_seed(seed), and a draw taken after it (RNG use)."""
    torch.manual_seed(seed)
    cameras = solve(ray, conf, NET_H, NET_W)
    return cameras, torch.rand(4)


def _exact(ray, conf, height, width):
    return cameras_from_rays(ray, conf, height, width, exact=True)


def _assert_close_rel(cameras, reference):
    errs = [rel_err(a, b) for a, b in zip(cameras, reference)]
    assert max(errs) <= TOL, f"extrinsics, intrinsics relative errors {errs}"


@pytest.mark.parametrize(
    ("shape", "kind", "seed"),
    [
        ((1, 1, 16, 24), "camera", 0),
        ((2, 3, 16, 24), "camera", 1),
        ((1, 2, 16, 24), "offcentre", 2),
        ((1, 1, 16, 24), "random", 3),
        ((2, 2, 16, 24), "random", 4),
        ((1, 3, 80, 112), "random", 5),
        ((1, 1, 80, 112), "camera", 6),  # > 8000 inliers: exercises the random refit subset
    ],
)
def test_parity_with_official(official, shape, kind, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    b, s, h, w = shape
    if kind == "random":
        ray = torch.randn(b, s, h, w, 6, generator=gen)
        ray[..., 2] += 3.0  # keeps enough RANSAC inliers (the official solver raises otherwise)
    else:
        cams = _random_cameras(b, s, gen, centred=kind == "camera")
        ray = _rays(*cams, h, w, gen, noise=0.01)
    conf = _confidence(shape, gen)
    conf_before = conf.clone()

    (ext, ixt), nxt = _seeded(_exact, ray, conf, seed)
    (ext_ref, ixt_ref), nxt_ref = _seeded(official, ray, conf, seed)
    fast, nxt_fast = _seeded(cameras_from_rays, ray, conf, seed)

    assert ext.shape == (b, s, 3, 4) and ixt.shape == (b, s, 3, 3)
    assert ext.dtype == ixt.dtype == torch.float32
    torch.testing.assert_close(ext, ext_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ixt, ixt_ref, rtol=1e-4, atol=1e-4)
    # Same float32 operations in the same order: expected to be bit-identical on CPU.
    assert torch.equal(ext, ext_ref) and torch.equal(ixt, ixt_ref)
    assert torch.equal(nxt, nxt_ref), "RNG consumption differs from the official solver"
    # The fast default: the same draws, cameras equal up to the float32 rounding of the exact refit. Pure
    # noise rays make that refit ill-conditioned (the official float32 SVD is then itself off by ~1e-4).
    assert fast[0].dtype == fast[1].dtype == torch.float32
    if kind != "random":
        _assert_close_rel(fast, (ext_ref, ixt_ref))
    assert torch.equal(nxt_fast, nxt_ref), "RNG consumption of the fast solver differs"
    assert torch.equal(conf, conf_before), "inputs must not be modified"


@pytest.mark.parametrize("exact", [True, False])
def test_few_inliers_raises_like_official(official, exact):
    gen = torch.Generator().manual_seed(7)
    ray = torch.randn(2, 3, 16, 24, 6, generator=gen)
    ray[..., :2] *= 100.0  # scattered far beyond the 0.2 inlier radius: no hypothesis gets 4 inliers
    ray[..., 2] = 1.0
    conf = _confidence((2, 3, 16, 24), gen)
    torch.manual_seed(0)
    with pytest.raises(ValueError):
        official(ray, conf, NET_H, NET_W)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="fewer than 4"):
        cameras_from_rays(ray, conf, NET_H, NET_W, exact=exact)


@pytest.mark.parametrize(("shape", "seed"), [((1, 1, 16, 24), 0), ((2, 3, 24, 36), 1), ((1, 2, 40, 72), 2)])
def test_exact_on_noise_free_cameras(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    b, s, h, w = shape
    rot, centre, k = _random_cameras(b, s, gen)
    ray = _rays(rot, centre, k, h, w, gen)
    conf = _confidence(shape, gen)

    torch.manual_seed(seed)
    ext, ixt = cameras_from_rays(ray, conf, NET_H, NET_W)

    w2c = torch.cat([rot.mT, -rot.mT @ centre.unsqueeze(-1)], dim=-1).float()
    torch.testing.assert_close(ext, w2c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ixt, k.float(), rtol=1e-4, atol=1e-4)


def _realistic_rays(shape, seed, noise, outliers, grazing=0.0):
    """Noisy camera rays with a fraction of outliers (random directions and centres) and of grazing
    directions (z = 0, which the solver gives weight 0), plus head-like confidences."""
    gen = torch.Generator().manual_seed(seed)
    b, s, h, w = shape
    ray = _rays(*_random_cameras(b, s, gen), h, w, gen, noise=noise)
    bad = torch.rand(shape, generator=gen) < outliers
    ray[bad] = torch.randn(int(bad.sum()), 6, generator=gen)
    ray[..., 2][torch.rand(shape, generator=gen) < grazing] = 0.0
    return ray, _confidence(shape, gen)


REALISTIC = [  # shape (B, S, h, w), noise, outlier fraction, grazing fraction
    ((1, 1, 160, 288), 0.01, 0.2, 0.0),  # da3-small's ray map at 280x504: > 8000 inliers, random refit subset
    ((1, 3, 64, 96), 0.02, 0.3, 0.01),
    ((2, 2, 48, 80), 0.005, 0.1, 0.0),
]


@pytest.mark.parametrize(("shape", "noise", "outliers", "grazing"), REALISTIC)
def test_fast_matches_exact(shape, noise, outliers, grazing):
    ray, conf = _realistic_rays(shape, sum(shape), noise, outliers, grazing)
    (ext, ixt), nxt = _seeded(_exact, ray, conf, 3)
    (ext_fast, ixt_fast), nxt_fast = _seeded(cameras_from_rays, ray, conf, 3)
    assert ext_fast.shape == ext.shape and ixt_fast.shape == ixt.shape
    _assert_close_rel((ext_fast, ixt_fast), (ext, ixt))
    assert torch.equal(nxt_fast, nxt), "the fast solver must consume the global RNG like the exact one"


@pytest.mark.parametrize("step", [None, 1000])  # default step, and many uneven row blocks per hypothesis
@pytest.mark.parametrize(("shape", "noise", "outliers", "grazing"), REALISTIC)
def test_fast_scoring_selects_the_same_inliers(monkeypatch, shape, noise, outliers, grazing, step):
    """The stepwise grid scoring repeats the exact scoring's roundings: the same RANSAC inliers on CPU."""
    if step is not None:
        monkeypatch.setattr(ray_pose, "_CPU_STEP", step)
    ray, conf = _realistic_rays(shape, sum(shape), noise, outliers, grazing)
    b, s, h, w = shape
    ray, conf = ray.reshape(b * s, h * w, 6), conf.reshape(b * s, h * w)
    src = ray_pose._camera_plane(h, w, ray.device).expand(b * s, h * w, 2)
    valid = ray[..., 2] != 0  # as the solver: grazing rays keep raw x, y and get weight 0
    dst = torch.where(valid.unsqueeze(-1), ray[..., :2] / ray[..., 2:3], ray[..., :2])
    conf = torch.where(valid, conf, torch.zeros_like(conf))
    torch.manual_seed(0)
    n_candidates, picks = ray_pose._draw_hypotheses(h * w, ray.device)
    exact = ray_pose._best_inliers(src, dst, conf, n_candidates, picks)
    hyps = ray_pose._hypotheses(src, dst, conf, n_candidates, picks)
    xs, ys = ray_pose._grid_axes(w, ray.device), ray_pose._grid_axes(h, ray.device)
    u, v = dst[..., 0].contiguous(), dst[..., 1].contiguous()
    scratch = torch.empty(len(picks), h * w)
    for view in range(b * s):
        fast = ray_pose._best_inliers_grid(hyps[view], xs, ys, u[view], v[view], conf[view], scratch)
        assert torch.equal(fast, exact[view])


def test_autocast_does_not_reach_the_solver():
    ray, conf = _realistic_rays((1, 2, 40, 72), 11, 0.01, 0.1)
    ray = ray.bfloat16().float()
    (ext, ixt), _ = _seeded(cameras_from_rays, ray, conf, 0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        (ext_ac, ixt_ac), _ = _seeded(cameras_from_rays, ray, conf, 0)
    assert ext_ac.dtype == ixt_ac.dtype == torch.float32
    assert torch.equal(ext_ac, ext) and torch.equal(ixt_ac, ixt)
