"""`DA3.infer`: images in, numpy out; known poses put every output in the caller's frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3_splat import DA3
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import matrix_to_quat_wxyz, normalize_extrinsics, quat_xyzw_to_matrix
from da3_splat.model.preprocess import InputError, normalize, preprocess
from da3_splat.sh import eval_sh_basis


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return DA3.from_config("da3-small")


def _images(n, h=90, w=160, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_infer_shapes_and_units(small):
    pred = small.infer(_images(2), process_res=168)
    assert pred.depth.shape == (2, 98, 168) and pred.processed_images.shape == (2, 98, 168, 3)
    assert pred.extrinsics.shape == (2, 3, 4) and pred.intrinsics.shape == (2, 3, 3)
    assert pred.ray is None and (pred.depth > 0).all() and (pred.depth_conf >= 1).all()
    with_rays = small.infer(_images(2), process_res=168, return_rays=True)
    assert with_rays.ray.shape == (2, 56, 96, 6)
    np.testing.assert_allclose(with_rays.depth, pred.depth, rtol=1e-6)


def test_default_resolution_is_the_models_own(small):
    from dataclasses import replace

    assert small.config.process_res == 504  # the official models' resolution
    small.config = replace(small.config, process_res=84)  # e.g. a model trained here at 84 px
    try:
        assert small.infer(_images(1)).processed_images.shape == (1, 42, 84, 3)
    finally:
        small.config = replace(small.config, process_res=504)


@pytest.mark.parametrize("S", [2, 4])
def test_known_poses_are_returned_and_depth_rescaled(small, S):
    g = torch.Generator().manual_seed(S)
    R = quat_xyzw_to_matrix(torch.randn(S, 4, generator=g))
    w2c = torch.cat([R, 5 * torch.randn(S, 3, 1, generator=g)], -1)
    K = np.array([[120.0, 0, 80], [0, 120.0, 45], [0, 0, 1]], np.float32)
    pred = small.infer(_images(S), extrinsics=w2c.numpy(), intrinsics=K, process_res=168)
    np.testing.assert_allclose(pred.extrinsics, w2c.numpy(), atol=1e-5)
    # The network saw normalised poses; infer() converts its depth back to the caller's units.
    pre = preprocess(_images(S), 168, intrinsics=K)
    with torch.no_grad():
        raw = small(pre.images[None], normalize_extrinsics(w2c[None]), torch.from_numpy(pre.intrinsics)[None])
    ratio = pred.depth / raw["depth"][0].numpy()
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-4) and ratio.flat[0] > 0
    if S == 2:  # exactly the normalisation scale (median camera distance from the first camera)
        centres = [-(w2c[i, :, :3].T @ w2c[i, :, 3]) for i in range(S)]
        expected = max(float(torch.stack([(c - centres[0]).norm() for c in centres]).median()), 0.1)
        assert ratio.flat[0] == pytest.approx(expected, rel=1e-4)


def test_bad_pose_input(small):
    with pytest.raises(InputError):
        small.infer(_images(2), extrinsics=np.eye(4)[None].repeat(2, 0), process_res=168)


def test_gaussians_transformed_is_a_similarity():
    g = torch.Generator().manual_seed(0)
    n = 50
    gs = Gaussians(
        torch.randn(n, 3, generator=g),
        torch.randn(n, 4, generator=g),
        torch.rand(n, 3, generator=g),
        torch.rand(n, generator=g),
        torch.randn(n, 9, 3, generator=g),
    )
    R = quat_xyzw_to_matrix(torch.randn(4, generator=g))
    t, s = torch.randn(3, generator=g), 2.5
    out = gs.transformed(R, t, s)
    torch.testing.assert_close(out.means, s * gs.means @ R.T + t)
    torch.testing.assert_close(out.scales, gs.scales * s)
    # rotation part: R(q') = R @ R(q)
    from da3_splat.geometry import quat_wxyz_to_xyzw

    rot = lambda q: quat_xyzw_to_matrix(quat_wxyz_to_xyzw(q))  # noqa: E731
    torch.testing.assert_close(rot(out.quats), R @ rot(gs.quats), atol=1e-5, rtol=1e-5)
    # colour seen along a world direction is carried along: f'(R d) = f(d)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    before = (eval_sh_basis(2, d)[..., None] * gs.sh).sum(-2)
    after = (eval_sh_basis(2, d @ R.T)[..., None] * out.sh).sum(-2)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert matrix_to_quat_wxyz(R).shape == (4,)


def test_normalize_roundtrip():
    imgs = np.stack(_images(1, 28, 28))
    x = normalize(imgs)
    assert x.shape == (1, 3, 28, 28)
