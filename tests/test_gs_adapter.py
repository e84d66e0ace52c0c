"""GS adapter (da3_splat.model.gs_adapter): parity with the official GaussianAdapter and its own properties."""

from pathlib import Path

import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import apply_sim3_to_w2c, quat_xyzw_to_matrix
from da3_splat.model.gs_adapter import num_raw_channels, pose_alignment_scale, raw_to_gaussians
from tests.oracle import official_sh_helpers


def _oracle_adapter_module():
    official_sh_helpers()
    from depth_anything_3.model import gs_adapter

    return gs_adapter


def _giant_adapter_kwargs():
    from depth_anything_3.model import gs_adapter
    from omegaconf import OmegaConf  # as the oracle reads it (plain PyYAML parses "1e-5" as a string)

    cfg = Path(gs_adapter.__file__).parents[1] / "configs" / "da3-giant.yaml"
    kwargs = OmegaConf.to_container(OmegaConf.load(cfg).gs_adapter)
    kwargs.pop("__object__")
    return kwargs


def _random_inputs(B, S, H, W, sh_degree=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    C = num_raw_channels(sh_degree)
    raw = torch.randn(B, S, H, W, C, generator=g)
    raw[..., -1] *= 0.1  # depth offsets small next to the depths
    opacity = torch.rand(B, S, H, W, generator=g)
    depth = 0.5 + 5 * torch.rand(B, S, H, W, generator=g)
    R = quat_xyzw_to_matrix(torch.randn(B, S, 4, generator=g))
    t = torch.randn(B, S, 3, 1, generator=g)
    w2c = torch.cat([R, t], dim=-1)  # (B, S, 3, 4), as the camera decoder returns it
    f = torch.tensor([W, H], dtype=torch.float32) * (0.7 + 0.6 * torch.rand(B, S, 2, generator=g))
    c = torch.tensor([W, H], dtype=torch.float32) * (0.5 + 0.05 * torch.randn(B, S, 2, generator=g))
    K = torch.zeros(B, S, 3, 3)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = f[..., 0], f[..., 1], c[..., 0], c[..., 1], 1
    return [x.to(dtype) for x in (raw, opacity, depth, w2c, K)]


def _as_44(w2c):
    bottom = torch.tensor([0.0, 0, 0, 1], dtype=w2c.dtype).expand(*w2c.shape[:-2], 1, 4)
    return torch.cat([w2c, bottom], dim=-2)


def _run_oracle(adapter, raw, opacity, depth, w2c, K, gt=None):
    H, W = raw.shape[2:4]
    with torch.no_grad():
        return adapter(
            extrinsics=_as_44(w2c),
            intrinsics=K,
            depths=depth,
            opacities=opacity,
            raw_gaussians=raw,
            image_shape=(H, W),
            gt_extrinsics=None if gt is None else _as_44(gt),
        )


def _assert_parity(ours: Gaussians, theirs, atol=1e-5, rtol=1e-4):
    pairs = {
        "means": (ours.means, theirs.means),
        "scales": (ours.scales, theirs.scales),
        "quats": (ours.quats, theirs.rotations),
        "sh": (ours.sh, theirs.harmonics.transpose(-1, -2)),
        "opacities": (ours.opacities, theirs.opacities),
    }
    for name, (a, b) in pairs.items():
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("B,S,H,W", [(1, 1, 14, 28), (2, 3, 14, 28), (1, 2, 28, 14), (2, 1, 7, 9)])
def test_parity_with_official_adapter(B, S, H, W):
    oracle = _oracle_adapter_module()
    adapter = oracle.GaussianAdapter(**_giant_adapter_kwargs())
    assert adapter.d_in == num_raw_channels(2) == 37
    inputs = _random_inputs(B, S, H, W, seed=B * 100 + S * 10 + H)
    ours = raw_to_gaussians(*inputs, sh_degree=2)
    _assert_parity(ours, _run_oracle(adapter, *inputs))
    assert ours.num_gaussians == S * H * W and ours.sh_degree == 2


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_parity_other_sh_degrees(sh_degree):
    oracle = _oracle_adapter_module()
    kwargs = {**_giant_adapter_kwargs(), "sh_degree": sh_degree}
    adapter = oracle.GaussianAdapter(**kwargs)
    inputs = _random_inputs(2, 2, 8, 12, sh_degree=sh_degree, seed=sh_degree)
    _assert_parity(raw_to_gaussians(*inputs, sh_degree=sh_degree), _run_oracle(adapter, *inputs))


def test_parity_with_two_views():
    # Two views: the cross-covariance of two camera centres has rank 1; evo still fits the scale (here 2).
    oracle = _oracle_adapter_module()
    adapter = oracle.GaussianAdapter(**_giant_adapter_kwargs())
    raw, opacity, depth, w2c, K = _random_inputs(1, 2, 6, 8, seed=7)
    gt = w2c.clone()
    gt[..., 3] *= 2.0
    ours = raw_to_gaussians(raw, opacity, depth, w2c, K, gt_extrinsics=gt)
    _assert_parity(ours, _run_oracle(adapter, raw, opacity, depth, w2c, K, gt))


def test_identity_camera_geometry():
    raw, opacity, depth, _, K = _random_inputs(1, 1, 6, 10, seed=3, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)[:3].expand(1, 1, 3, 4)
    out = raw_to_gaussians(raw, opacity, depth, w2c, K)
    # Quaternion: with c2w = I the stored vector is the raw 4-vector reordered to wxyz (sign: entry 3 >= 0).
    q = torch.nn.functional.normalize(raw[..., 5:9], dim=-1).reshape(-1, 4)[:, [3, 0, 1, 2]]
    q = torch.where(q[:, 3:] < 0, -q, q)
    torch.testing.assert_close(out.quats[0], q)
    # Means lie at distance depth + offset along the ray through the offset pixel centre.
    dist = (depth + raw[..., -1]).reshape(-1)
    torch.testing.assert_close(out.means[0].norm(dim=-1), dist)
    pix = (K[0, 0] @ out.means[0].T).T
    pix = pix[:, :2] / pix[:, 2:]
    i, j = torch.meshgrid(torch.arange(6.0), torch.arange(10.0), indexing="ij")
    expected = torch.stack([j + 0.5 + raw[0, 0, ..., 0], i + 0.5 + raw[0, 0, ..., 1]], dim=-1).reshape(-1, 2)
    torch.testing.assert_close(pix, expected.double())
    # Scales: sigmoid range x distance x 0.1 (1/fx + 1/fy).
    s = 1e-5 + (30 - 1e-5) * torch.sigmoid(raw[..., 2:5]).reshape(-1, 3)
    foot = 0.1 * (1 / K[0, 0, 0, 0] + 1 / K[0, 0, 1, 1])
    torch.testing.assert_close(out.scales[0], s * dist[:, None] * foot)


def test_log_depth_offset_is_a_factor_on_depth():
    raw, opacity, depth, _, K = _random_inputs(1, 1, 6, 10, seed=3, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)[:3].expand(1, 1, 3, 4)
    out = raw_to_gaussians(raw, opacity, depth, w2c, K, log_depth_offset=True)
    dist = (depth * torch.exp(raw[..., -1])).reshape(-1)
    torch.testing.assert_close(out.means[0].norm(dim=-1), dist)
    # Scale-free: doubling the depth doubles means and scales, whatever the offsets.
    twice = raw_to_gaussians(raw, opacity, 2 * depth, w2c, K, log_depth_offset=True)
    torch.testing.assert_close(twice.means, 2 * out.means)
    torch.testing.assert_close(twice.scales, 2 * out.scales)


def test_pose_alignment_scale():
    g = torch.Generator().manual_seed(0)
    pred = torch.cat([quat_xyzw_to_matrix(torch.randn(2, 5, 4, generator=g)), torch.randn(2, 5, 3, 1, generator=g)], -1)
    Rw = quat_xyzw_to_matrix(torch.randn(4, generator=g))
    tw = torch.randn(3, generator=g)
    scales = torch.tensor([1.7, 0.4])
    gt = torch.stack([apply_sim3_to_w2c(pred[b], Rw, tw, scales[b]) for b in range(2)])
    torch.testing.assert_close(pose_alignment_scale(pred, gt), scales)
    # Two views or collinear cameras still fix the scale; one view or coincident centres give 1.
    torch.testing.assert_close(pose_alignment_scale(pred[:, :2], gt[:, :2]), scales)
    line = pred.clone()
    line[..., 3] = 0.0
    line[..., :3, :3] = torch.eye(3)
    line[..., 0, 3] = torch.arange(5.0)  # centres on the x axis
    line_gt = torch.stack([apply_sim3_to_w2c(v, Rw, tw, torch.tensor(2.0)) for v in line])
    torch.testing.assert_close(pose_alignment_scale(line, line_gt), torch.tensor([2.0, 2.0]))
    assert pose_alignment_scale(pred[:, :1], gt[:, :1]).tolist() == [1.0, 1.0]
    same = pred.clone()
    same[..., 3] = 0.0
    same[..., :3, :3] = torch.eye(3)  # every camera at the origin
    assert pose_alignment_scale(same, gt).tolist() == [1.0, 1.0]


def test_gt_scale_applied_and_clamped():
    raw, opacity, depth, w2c, K = _random_inputs(2, 4, 5, 6, seed=11, dtype=torch.float64)
    base = raw_to_gaussians(raw, opacity, depth, w2c, K)
    for s_true, s_used in [(1.7, 1.7), (5.0, 3.0), (0.1, 1 / 3)]:
        gt = w2c.clone()
        gt[..., 3] *= s_true  # world scaled by s: camera centres scale, rotations unchanged
        out = raw_to_gaussians(raw, opacity, depth, w2c, K, gt_extrinsics=gt)
        torch.testing.assert_close(out.means, base.means * s_used)
        torch.testing.assert_close(out.scales, base.scales * s_used)
        torch.testing.assert_close(out.quats, base.quats)
        torch.testing.assert_close(out.sh, base.sh)
    same = raw_to_gaussians(raw, opacity, depth, w2c, K, gt_extrinsics=_as_44(w2c))
    torch.testing.assert_close(same.means, base.means, rtol=0, atol=0)


def test_gradients_and_container():
    raw, opacity, depth, w2c, K = _random_inputs(1, 2, 4, 5, seed=5)
    raw.requires_grad_(True)
    w2c.requires_grad_(True)
    out = raw_to_gaussians(raw, opacity, depth, w2c, K)
    loss = sum(x.square().sum() for x in (out.means, out.scales, out.quats, out.sh))
    loss.backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    assert torch.isfinite(w2c.grad).all()
    dbl = out.to(torch.float64)
    assert dbl.means.dtype == torch.float64 and dbl.sh.shape == (1, 40, 9, 3) and dbl.sh_degree == 2
    with pytest.raises(ValueError):
        raw_to_gaussians(raw[..., :-1], opacity, depth, w2c, K)
