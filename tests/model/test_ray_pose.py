"""Tests for da3_splat.model.ray_pose (DA3's ray-based camera solver).

Parity tests run the official package's `_process_ray_pose_estimation` as an oracle with the same seed.
"""

from __future__ import annotations

import math

import pytest
import torch

from da3_splat.model.ray_pose import cameras_from_rays
from tests.oracle import prepare

NET_H, NET_W = 280, 504  # network input size the ray maps belong to


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


def _run_both(official, ray, conf, seed):
    """Same seed on both sides; also returns a draw taken after each call to check RNG consumption."""
    torch.manual_seed(seed)
    ours = cameras_from_rays(ray, conf, NET_H, NET_W)
    ours_next = torch.rand(4)
    torch.manual_seed(seed)
    theirs = official(ray, conf, NET_H, NET_W)
    theirs_next = torch.rand(4)
    return ours, theirs, ours_next, theirs_next


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

    (ext, ixt), (ext_ref, ixt_ref), nxt, nxt_ref = _run_both(official, ray, conf, seed)

    assert ext.shape == (b, s, 3, 4) and ixt.shape == (b, s, 3, 3)
    assert ext.dtype == ixt.dtype == torch.float32
    torch.testing.assert_close(ext, ext_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ixt, ixt_ref, rtol=1e-4, atol=1e-4)
    # Same float32 operations in the same order: expected to be bit-identical on CPU.
    assert torch.equal(ext, ext_ref) and torch.equal(ixt, ixt_ref)
    assert torch.equal(nxt, nxt_ref), "RNG consumption differs from the official solver"
    assert torch.equal(conf, conf_before), "inputs must not be modified"


def test_few_inliers_raises_like_official(official):
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
        cameras_from_rays(ray, conf, NET_H, NET_W)


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


def test_thin_svd_option_and_autocast():
    gen = torch.Generator().manual_seed(11)
    shape = (1, 2, 40, 72)
    cams = _random_cameras(1, 2, gen)
    ray = _rays(*cams, 40, 72, gen, noise=0.01)
    conf = _confidence(shape, gen)

    torch.manual_seed(0)
    ext_fast, ixt_fast = cameras_from_rays(ray, conf, NET_H, NET_W, exact_svd=False)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ext, ixt = cameras_from_rays(ray.bfloat16().float(), conf, NET_H, NET_W)
    # bf16 autocast must not leak into the solver: outputs stay float32 and match the thin-SVD path
    # (which differs from the exact one by float rounding only).
    assert ext.dtype == ixt.dtype == torch.float32
    torch.testing.assert_close(ext_fast, ext, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ixt_fast, ixt, rtol=1e-3, atol=1e-3)
