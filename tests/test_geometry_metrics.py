"""Depth AbsRel / delta<1.25 and pairwise camera errors with AUC (`da3_splat.geometry_metrics`), against hand
computations and the invariances the pose metrics must have."""

import math

import numpy as np
import pytest
import torch

from da3_splat.geometry_metrics import depth_scores, finite_or_none, pose_auc, pose_scores, relative_pose_errors


def rot_y(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def w2c_from(R_w2c: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(S, 4, 4) world-to-camera from rotations (S, 3, 3) and camera centres in the world (S, 3)."""
    S = R_w2c.shape[0]
    T = torch.eye(4, dtype=torch.float64).repeat(S, 1, 1)
    T[:, :3, :3] = R_w2c
    T[:, :3, 3] = -(R_w2c @ centres[..., None])[..., 0]
    return T


def random_cameras(S: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    R = torch.stack([random_rotation(gen) for _ in range(S)])
    centres = torch.randn(S, 3, generator=gen, dtype=torch.float64) * 2.0
    return w2c_from(R, centres), R, centres


def pair_angle(u: torch.Tensor, v: torch.Tensor) -> float:
    cos = float(u @ v / (u.norm() * v.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


# --- cameras ---------------------------------------------------------------------------------------------------


def test_identical_poses_have_zero_error_and_auc_one():
    w2c, _, _ = random_cameras(5, seed=0)
    rot, trans = relative_pose_errors(w2c.clone(), w2c)
    assert rot.shape == trans.shape == (10,)  # every pair i < j of 5 views
    assert rot.abs().max() < 1e-6 and trans.abs().max() < 1e-6
    s = pose_scores(rot, trans)
    assert s.pairs == 10 and s.rotation_median < 1e-6 and s.translation_median < 1e-6
    assert s.auc3 == pytest.approx(1.0, abs=1e-8) and s.auc5 == pytest.approx(1.0, abs=1e-8)
    assert s.auc15 == pytest.approx(1.0, abs=1e-8)


def test_3x4_and_4x4_poses_agree():
    w2c, _, _ = random_cameras(4, seed=1)
    a = relative_pose_errors(w2c[:, :3], w2c)
    assert all(x.abs().max() < 1e-6 for x in a)


def test_one_camera_turned_10_degrees_about_its_y_axis():
    S, k, theta = 4, 2, 10.0
    gt, R, centres = random_cameras(S, seed=2)
    pred = gt.clone()
    Q = rot_y(theta)
    pred[k, :3, :3] = Q @ gt[k, :3, :3]  # the camera turns about its own centre: [R | t] -> Q [R | t]
    pred[k, :3, 3] = Q @ gt[k, :3, 3]
    torch.testing.assert_close(-(pred[k, :3, :3].T @ pred[k, :3, 3]), centres[k])  # same centre
    rot, trans = relative_pose_errors(pred, gt)
    pairs = [(i, j) for i in range(S) for j in range(i + 1, S)]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    for n, (i, j) in enumerate(pairs):
        if k not in (i, j):
            assert rot[n] < 1e-6 and trans[n] < 1e-6, (i, j)
            continue
        assert rot[n] == pytest.approx(theta, abs=1e-6), (i, j)
        if j == k:
            # the pair's translation is camera i's centre seen from camera k, which now sees it turned by Q
            v = R[k] @ (centres[i] - centres[k])
            expected = pair_angle(Q @ v, v)
            # by hand: a rotation about y by theta moves v by acos((v_y^2 + (v_x^2 + v_z^2) cos theta) / |v|^2)
            by_hand = math.degrees(
                math.acos((v[1] ** 2 + (v[0] ** 2 + v[2] ** 2) * math.cos(math.radians(theta))) / float(v @ v))
            )
            assert expected == pytest.approx(by_hand, abs=1e-9)
            assert 0 < expected <= theta + 1e-9
            assert trans[n] == pytest.approx(expected, abs=1e-6), (i, j)
        else:
            # camera k is the reference: camera j's view of k's centre does not change
            assert trans[n] < 1e-6, (i, j)


def test_turn_in_the_plane_of_the_cameras_gives_exactly_the_angle():
    # identity orientations, all centres in the x-z plane: every translation is perpendicular to the y axis
    centres = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 2.0]], dtype=torch.float64)
    gt = w2c_from(torch.eye(3, dtype=torch.float64).repeat(3, 1, 1), centres)
    pred = gt.clone()
    pred[2, :3] = rot_y(10.0) @ gt[2, :3]
    rot, trans = relative_pose_errors(pred, gt)
    torch.testing.assert_close(rot, torch.tensor([0.0, 10.0, 10.0], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(trans, torch.tensor([0.0, 10.0, 10.0], dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("scale", [1e-3, 0.37, 1.0, 250.0])
def test_errors_do_not_depend_on_the_world_frame_or_scale(scale):
    gt, R, centres = random_cameras(6, seed=3)
    gen = torch.Generator().manual_seed(4)
    G, shift = random_rotation(gen), torch.randn(3, generator=gen, dtype=torch.float64) * 5
    # the world mapped by x' = scale G x + shift: centres move with it, camera axes turn with it
    pred = w2c_from(R @ G.T, scale * centres @ G.T + shift)
    assert (pred - gt).abs().max() > 0.1  # really another frame
    rot, trans = relative_pose_errors(pred, gt)
    assert rot.abs().max() < 1e-6 and trans.abs().max() < 1e-6
    # and a perturbed prediction scores the same in any frame
    bent = gt.clone()
    bent[1, :3] = rot_y(7.0) @ gt[1, :3]
    bent[4, :3, 3] += torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    R_b, c_b = bent[:, :3, :3], -(bent[:, :3, :3].transpose(-1, -2) @ bent[:, :3, 3:])[..., 0]
    moved = w2c_from(R_b @ G.T, scale * c_b @ G.T + shift)
    for a, b in zip(relative_pose_errors(bent, gt), relative_pose_errors(moved, gt)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        assert a.max() > 1.0


def test_reversed_translation_is_180_degrees_not_0():
    eye = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    gt = w2c_from(eye, torch.tensor([[0.0, 0, 0], [0.0, 0, 1.0]], dtype=torch.float64))
    pred = w2c_from(eye, torch.tensor([[0.0, 0, 0], [0.0, 0, -3.0]], dtype=torch.float64))  # backwards, longer
    rot, trans = relative_pose_errors(pred, gt)
    assert float(rot[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(trans[0]) == pytest.approx(180.0, abs=1e-6)
    assert pose_scores(rot, trans).auc15 == 0.0


def test_rotation_of_180_degrees():
    centres = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    gt = w2c_from(torch.eye(3, dtype=torch.float64).repeat(2, 1, 1), centres)
    pred = gt.clone()
    pred[1, :3] = rot_y(180.0) @ gt[1, :3]
    rot, _ = relative_pose_errors(pred, gt)
    assert float(rot[0]) == pytest.approx(180.0, abs=1e-6)


def test_zero_relative_translation_scores_90_degrees():
    eye = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    gt = w2c_from(eye, torch.zeros(2, 3, dtype=torch.float64))  # two cameras at one point
    pred = w2c_from(eye, torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64))
    _, trans = relative_pose_errors(pred, gt)
    assert float(trans[0]) == 90.0


def test_auc_by_hand():
    rot = torch.tensor([1.0, 0.0, 4.0, 20.0])
    trans = torch.tensor([0.0, 2.0, 1.0, 0.0])  # max per pair: 1, 2, 4, 20
    assert pose_auc(rot, trans, 3.0) == pytest.approx((2 / 3 + 1 / 3 + 0 + 0) / 4)
    assert pose_auc(rot, trans, 5.0) == pytest.approx((0.8 + 0.6 + 0.2 + 0) / 4)
    assert pose_auc(rot, trans, 15.0) == pytest.approx((14 / 15 + 13 / 15 + 11 / 15 + 0) / 4)
    # the definition: the area under the accuracy curve (fraction of pairs with error <= t) up to T, over T
    err = torch.maximum(rot, trans).numpy()
    t = np.linspace(0.0, 15.0, 300_001)
    accuracy = (err[None, :] <= t[:, None]).mean(axis=1)
    area = float(((accuracy[1:] + accuracy[:-1]) / 2 * np.diff(t)).sum() / 15.0)
    assert pose_auc(rot, trans, 15.0) == pytest.approx(area, abs=1e-4)
    s = pose_scores(rot, trans)
    assert (s.auc3, s.auc5, s.auc15) == (pose_auc(rot, trans, 3), pose_auc(rot, trans, 5), pose_auc(rot, trans, 15))
    assert s.rotation_median == pytest.approx(2.5) and s.translation_median == pytest.approx(0.5) and s.pairs == 4


def test_pooling_and_empty_input():
    a = relative_pose_errors(*([random_cameras(3, seed=5)[0]] * 2))  # 3 pairs
    b = relative_pose_errors(*([random_cameras(4, seed=6)[0]] * 2))  # 6 pairs
    assert pose_scores(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])).pairs == 9
    assert pose_scores(a[0].tolist(), a[1].tolist()).pairs == 3  # lists work too
    one = random_cameras(1, seed=7)[0]
    rot, trans = relative_pose_errors(one, one)
    assert rot.numel() == trans.numel() == 0
    s = pose_scores(rot, trans)
    assert s.pairs == 0 and math.isnan(s.rotation_median) and math.isnan(s.auc5)


def test_finite_or_none():
    assert finite_or_none(float("nan")) is None and finite_or_none(None) is None
    assert finite_or_none(float("inf")) is None and finite_or_none(-float("inf")) is None
    assert finite_or_none(0.25) == 0.25 and finite_or_none(3) == 3


# --- depth -----------------------------------------------------------------------------------------------------


def test_depth_up_to_scale_is_perfect():
    gen = torch.Generator().manual_seed(8)
    gt = torch.rand(2, 3, 8, 10, generator=gen) * 5 + 0.5
    s = depth_scores(2 * gt, gt)
    assert s.abs_rel == pytest.approx(0.0, abs=1e-7) and s.delta1 == 1.0
    assert s.abs_rel_constant > 0.1


def test_depth_by_hand():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    pred = 3.0 * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # one pixel half as far; the medians (9, 3) align the scale
    s = depth_scores(pred, gt)
    assert s.abs_rel == pytest.approx((10 - 5) / 10 / 5)  # 0.1
    assert s.delta1 == pytest.approx(4 / 5)  # gt / pred = 2 fails, the others are exact
    # constant baseline: the GT median 3 everywhere -> |3-1|/1, |3-2|/2, 0, |3-4|/4, |3-10|/10
    assert s.abs_rel_constant == pytest.approx((2 + 0.5 + 0 + 0.25 + 0.7) / 5)  # 0.69


def test_delta_threshold_is_1_25_both_ways():
    gt = torch.ones(7)
    pred = torch.tensor([1.0, 1.0, 1.0, 1.2, 1.3, 1 / 1.2, 1 / 1.3])  # median 1: no rescaling
    s = depth_scores(pred, gt)
    assert s.delta1 == pytest.approx(5 / 7)  # 1.3 and 1 / 1.3 are out, 1.2 and 1 / 1.2 in
    assert s.abs_rel == pytest.approx((0.2 + 0.3 + (1 - 1 / 1.2) + (1 - 1 / 1.3)) / 7)
    assert s.abs_rel_constant == 0.0


def test_depth_ignores_invalid_pixels():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, float("nan"), float("inf"), 2.0])
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 7.0, 1.0, 1.0, float("nan")])
    s = depth_scores(pred, gt)
    assert s.abs_rel == pytest.approx(0.2) and s.delta1 == pytest.approx(0.8)
    valid = torch.tensor([True, True, True, True, False, True, True, True, True])  # masks the bad pixel out
    assert depth_scores(pred, gt, valid).abs_rel == pytest.approx(0.0, abs=1e-12)
    none = depth_scores(pred, torch.zeros_like(gt))
    assert math.isnan(none.abs_rel) and math.isnan(none.delta1) and math.isnan(none.abs_rel_constant)
    assert set(none.to_dict()) == {"abs_rel", "delta1", "abs_rel_constant"}
