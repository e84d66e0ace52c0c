"""Cameras from cross-view patch matches and depth (``da3_splat.model.match_pose``): the robust similarity fit, and
the whole solver on a scene whose depth and matching features are exact, where it must recover the true relative
poses (a sign, transpose or axis bug in it gives errors of many degrees)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from da3_splat.geometry import baseline_scale, quat_xyzw_to_matrix
from da3_splat.geometry_metrics import relative_pose_errors
from da3_splat.model import DA3, DA3Config, match_pose
from da3_splat.model.match_pose import (
    _solve_pair,
    cameras_from_matches,
    candidate_pairs,
    mutual_matches,
    place_child,
    similarity_ransac,
)
from tests.train.test_trainer import MICRO_ARCH

H, W, PATCH = 126, 224, 14
FOCAL = W / 2 / math.tan(math.radians(35))
K = torch.tensor([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]], dtype=torch.float64)
PLANE_NORMAL = torch.nn.functional.normalize(torch.tensor([0.15, -0.1, 1.0], dtype=torch.float64), dim=0)
PLANE_OFFSET = 3.0  # the plane n . X = 3, seen from cameras near the origin looking along +z


def rotation(axis, degrees) -> torch.Tensor:
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    half = math.radians(degrees) / 2
    return quat_xyzw_to_matrix(torch.cat([axis * math.sin(half), torch.tensor([math.cos(half)], dtype=torch.float64)]))


def plane_points(w2c: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points of the plane seen at pixel positions (continuous, pixel centres at +0.5) and their z-depth."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    centre = -R.T @ t
    rays_cam = torch.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], torch.ones_like(rows)], dim=-1)
    rays = rays_cam @ R  # camera z = 1 rays in the world frame
    depth = (PLANE_OFFSET - PLANE_NORMAL @ centre) / (rays @ PLANE_NORMAL)
    return centre + depth[..., None] * rays, depth


def scene(w2cs: list[torch.Tensor], x_range: tuple[float, float] = (-4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth maps (1, S, H, W) of the plane and patch features (1, S, P, C) that encode where on the plane each
    patch centre lies (radial basis functions on a grid of plane positions): exact matching features."""
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij"
    )
    pr, pc = torch.meshgrid(
        (torch.arange(H // PATCH, dtype=torch.float64) + 0.5) * PATCH,
        (torch.arange(W // PATCH, dtype=torch.float64) + 0.5) * PATCH,
        indexing="ij",
    )
    columns = torch.arange(x_range[0], x_range[1] + 1e-9, 0.25)
    anchors = torch.stack(torch.meshgrid(columns, torch.linspace(-3, 3, 25), indexing="ij"), -1)
    anchors = anchors.reshape(-1, 2).double()
    depths, feats = [], []
    for w2c in w2cs:
        depths.append(plane_points(w2c, v, u)[1])
        points = plane_points(w2c, pr.flatten(), pc.flatten())[0]
        feats.append(torch.exp(-torch.cdist(points[:, :2], anchors).square() / (2 * 0.25**2)))
    return torch.stack(depths)[None], torch.stack(feats)[None]


def test_similarity_ransac_ignores_outliers():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(60, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 5.0], dtype=torch.float64)
    R, t, s = rotation([0.3, 1, 0.2], 12), torch.tensor([0.4, -0.1, 0.2], dtype=torch.float64), 1.7
    dst = s * src @ R.T + t
    wrong = torch.nn.functional.normalize(torch.randn(20, 3, generator=g, dtype=torch.float64), dim=1)
    dst[:20] += 3 * wrong  # a third are wrong matches, each 3 units (about 35% of its depth) off
    Rf, tf, sf, inliers = similarity_ransac(src, dst, torch.ones(60, dtype=torch.float64), g)
    torch.testing.assert_close(Rf, R)
    torch.testing.assert_close(tf, t)
    assert float(sf) == pytest.approx(s)
    assert inliers[20:].all() and not inliers[:20].any()


def test_mutual_matches_refine_below_a_patch():
    """Features peaked between patches: the soft-argmax lands between them, the argmax could not."""
    h, w = 3, 4
    ref = torch.eye(h * w, dtype=torch.float64)
    other = torch.zeros(h * w, h * w, dtype=torch.float64)
    other[5, 5] = 1.0  # patch (1, 1) of the other view matches ref patch 5 best ...
    other[6, 5] = 0.9  # ... and its right neighbour almost as well
    src, rows, cols, _ = mutual_matches(ref, other, h, w)
    i = int((src == 5).nonzero())
    assert float(rows[i]) == pytest.approx(1.0)
    assert 1.0 < float(cols[i]) < 1.5


def three_cameras() -> list[torch.Tensor]:
    """World-to-camera (4, 4) of three views of the plane, 7 to 9 degrees and up to 0.45 units apart."""
    w2cs = [torch.eye(4, dtype=torch.float64) for _ in range(3)]
    w2cs[1][:3, :3], w2cs[1][:3, 3] = rotation([0, 1, 0.1], 9), torch.tensor([-0.45, 0.05, 0.1], dtype=torch.float64)
    w2cs[2][:3, :3], w2cs[2][:3, 3] = rotation([0.2, -1, 0], 7), torch.tensor([0.3, -0.1, -0.2], dtype=torch.float64)
    return w2cs


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("reference", [0, 2])
def test_recovers_relative_poses_from_exact_matches_and_depth(reference, refine):
    w2cs = three_cameras()
    depth, features = scene(w2cs)
    others = [i for i in range(3) if i != reference]
    depth[:, others] *= 1.5  # views predicted at another scale than the reference: Sim(3), not rigid, fits
    Ks = K.expand(1, 3, 3, 3)
    extrinsics, scale, counts = cameras_from_matches(features, depth, Ks, torch.tensor([reference]), refine=refine)
    assert counts[0, reference] == 0 and (counts[0].sum() > 0)
    torch.testing.assert_close(extrinsics[0, reference], torch.eye(3, 4, dtype=torch.float64))
    rot, trans = relative_pose_errors(extrinsics[0], torch.stack(w2cs))
    assert rot.max() < 0.5, rot
    # Sub-patch refinement is approximate: ideal matches still give 1-5 degrees per pair (the tree: 0.9 to 4.0),
    # and the pose graph trades the three pairs' slightly inconsistent directions against each other (1.8 to 6.4).
    assert trans.max() < (7.0 if refine else 5.0), trans
    # the translations come out in the reference's depth units: here the true ones
    truth = torch.stack(w2cs)[:, :3] @ torch.linalg.inv(w2cs[reference])
    torch.testing.assert_close(extrinsics[0, :, :, 3], truth[:, :, 3], atol=0.05, rtol=0)
    expected_scale = torch.where(torch.arange(3) == reference, 1.0, 1.5).double()
    torch.testing.assert_close(scale[0], expected_scale, atol=0.03, rtol=0)


def test_a_view_that_shares_nothing_with_the_reference_is_placed_through_another():
    """Three cameras sliding along the plane: the first and the last see disjoint parts of it."""
    w2cs = [torch.eye(4, dtype=torch.float64) for _ in range(3)]
    for view, (x, degrees) in enumerate([(0.0, 0), (2.0, 3), (4.5, -4)]):  # camera centres at x = 0, 2, 4.5
        w2cs[view][:3, :3] = rotation([0.1, 1, 0], degrees)
        w2cs[view][:3, 3] = -w2cs[view][:3, :3] @ torch.tensor([x, 0.0, 0.0], dtype=torch.float64)
    depth, features = scene(w2cs, x_range=(-4, 9))
    depth[:, 1] *= 1.25  # depth in other units than the reference's: the scales compose along the chain
    depth[:, 2] *= 0.8
    direct = _solve_pair(features[0], depth[0], K.expand(3, 3, 3), 0, 2, 9, 16, torch.Generator())
    extrinsics, scale, counts = cameras_from_matches(features, depth, K.expand(1, 3, 3, 3), torch.tensor([0]))
    assert direct is None or direct[3] < counts[0, 2]  # a chance fit at most, less supported than the chain
    rot, trans = relative_pose_errors(extrinsics[0], torch.stack(w2cs))
    assert rot.max() < 1.0 and trans.max() < 6.0, (rot, trans)  # errors compose along the chain
    torch.testing.assert_close(extrinsics[0, :, :, 3], torch.stack(w2cs)[:, :3, 3], atol=0.1, rtol=0)
    torch.testing.assert_close(scale[0], torch.tensor([1.0, 1.25, 0.8], dtype=torch.float64), atol=0.06, rtol=0)


def test_placing_a_view_from_its_parent_composes_the_similarities_exactly():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)  # world points, the reference's units
    R_p, t_p, scale_p = rotation([1, 0.3, 0], 20), torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64), 1.7
    R, t, s = rotation([0.2, 1, -0.5], 35), torch.tensor([-0.3, 0.5, 0.1], dtype=torch.float64), 0.6
    in_parent = scale_p * (X @ R_p.T + t_p)  # the parent's camera frame, in its own depth units
    in_child = s * in_parent @ R.T + t  # the pair's fit: parent -> child
    R_c, t_c, scale_c = place_child(R_p, t_p, torch.tensor(scale_p, dtype=torch.float64), R, t, torch.tensor(s))
    torch.testing.assert_close(scale_c * (X @ R_c.T + t_c), in_child)


def test_candidate_pairs_grow_linearly_beyond_all_pairs():
    assert candidate_pairs(4, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    pairs = candidate_pairs(100, 50)
    assert len(pairs) == len(set(pairs)) < 400 and all(i < j for i, j in pairs)
    assert {(min(50, j), max(50, j)) for j in range(100) if j != 50} <= set(pairs)  # every view with the reference
    assert (0, 1) in pairs and (0, 2) in pairs and (0, 3) not in pairs  # neighbours in input order


def test_without_matches_a_view_keeps_the_reference_pose():
    depth = torch.full((1, 2, H, W), 2.0, dtype=torch.float64)
    features = torch.zeros(1, 2, (H // PATCH) * (W // PATCH), 8, dtype=torch.float64)
    features[0, 0, :, 0] = 1.0
    features[0, 1, :, 1] = 1.0  # orthogonal: every similarity ties at 0, one mutual pair at most
    extrinsics, _, counts = cameras_from_matches(features, depth, K.expand(1, 2, 3, 3), torch.tensor([0]))
    assert counts.sum() == 0
    torch.testing.assert_close(extrinsics[0, 1], torch.eye(3, 4, dtype=torch.float64))


def micro_models() -> tuple[DA3, DA3]:
    """The same random micro model twice: cameras from the decoder, and from matches."""
    torch.manual_seed(0)
    decoder = DA3(DA3Config.from_dict(MICRO_ARCH)).eval()
    matches = DA3(DA3Config.from_dict({**MICRO_ARCH, "pose_solver": "matches"})).eval()
    matches.load_state_dict(decoder.state_dict())
    return decoder, matches


def test_a_model_set_to_matches_solves_its_pose_free_cameras_from_them(monkeypatch):
    monkeypatch.setattr(match_pose, "MIN_INLIERS", 3)  # the micro model's 24 patches give few matches
    decoder, matches = micro_models()
    x = torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = decoder(x, keep_features=True)
        out = matches(x)
    solved = cameras_from_matches(base.features[0], base.depth, base.intrinsics, base.reference_view)
    assert solved.inliers.sum() > 0  # at least one view really solved, so the comparison means something
    torch.testing.assert_close(out.extrinsics, solved.extrinsics)
    torch.testing.assert_close(out.depth, base.depth / solved.depth_scale[..., None, None])
    torch.testing.assert_close(out.intrinsics, base.intrinsics)  # the decoder's field of view stays


def test_the_decoder_gives_the_cameras_while_it_trains_and_with_given_poses():
    decoder, matches = micro_models()
    x = torch.rand(1, 2, 3, 56, 84, generator=torch.Generator().manual_seed(2))
    matches.cam_dec.train()
    decoder.cam_dec.train()
    torch.testing.assert_close(matches(x).extrinsics, decoder(x).extrinsics)  # the losses need the decoder's own
    matches.cam_dec.eval()
    decoder.cam_dec.eval()
    w2c = torch.eye(4).expand(1, 2, 4, 4).clone()
    w2c[0, 1, 0, 3] = 0.3
    K = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).expand(1, 2, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(matches(x, w2c, K).extrinsics, decoder(x, w2c, K).extrinsics)


def test_a_view_no_match_reaches_keeps_the_decoders_camera(monkeypatch):
    """Not the reference's pose: coincident cameras break whatever normalises by their spread (nerfstudio)."""
    monkeypatch.setattr(match_pose, "MIN_INLIERS", 10**6)  # no pair solves
    decoder, matches = micro_models()
    x = torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, out = decoder(x), matches(x)
    ref = int(out.reference_view[0])
    others = [v for v in range(3) if v != ref]
    torch.testing.assert_close(out.extrinsics[0, others], base.extrinsics[0, others, :3].to(out.extrinsics))
    torch.testing.assert_close(out.extrinsics[0, ref], torch.eye(3, 4, dtype=out.extrinsics.dtype))


def test_posed_depth_calibration_takes_the_baselines_of_the_match_cameras(monkeypatch):
    """Posed, the "cameras" calibration compares the model's baselines with the given ones: a model set to matches
    takes its match cameras' (in its depth's own units), not the decoder's, which a collapsed decoder makes ~0."""
    monkeypatch.setattr(match_pose, "MIN_INLIERS", 3)
    decoder, matches = micro_models()
    matches.config = replace(matches.config, posed_depth_calibration="cameras")
    x = torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    w2c = torch.eye(4).repeat(1, 3, 1, 1)
    w2c[0, 1, 0, 3], w2c[0, 2, 1, 3] = 0.3, -0.5
    K = torch.tensor([[60.0, 0, 42], [0, 60, 28], [0, 0, 1]]).expand(1, 3, 3, 3)
    with torch.no_grad():
        base = decoder(x, w2c, K, keep_features=True)  # the same pass, uncalibrated, cameras from the decoder
        out = matches(x, w2c, K, gs_cameras=(w2c, K))
    solved = cameras_from_matches(base.features[0], base.depth, base.intrinsics, base.reference_view)
    assert solved.inliers.sum() > 0
    factor = baseline_scale(solved.extrinsics[0], w2c[0])
    assert not torch.isclose(factor, baseline_scale(base.extrinsics[0], w2c[0]))
    torch.testing.assert_close(out.depth_scale, factor[None])
    torch.testing.assert_close(out.depth, base.depth / solved.depth_scale[..., None, None] * factor)


def test_unknown_pose_solver_is_refused():
    with pytest.raises(ValueError, match="pose_solver"):
        DA3Config.from_dict({**MICRO_ARCH, "pose_solver": "oracle"})
