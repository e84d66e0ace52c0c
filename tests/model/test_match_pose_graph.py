"""The pose graph that adjusts the match cameras to every fitted pair (``match_pose.refine_pose_graph``): it keeps
consistent poses, pulls a wrongly placed view back onto its pairs, spreads independent pair errors instead of
stacking them along the tree, and outvotes a wrong pair."""

from __future__ import annotations

import torch

from da3_splat.geometry import so3_exp
from da3_splat.geometry_metrics import relative_pose_errors
from da3_splat.model import match_pose
from da3_splat.model.match_pose import place_child, refine_pose_graph
from tests.model.test_match_pose import K, scene, three_cameras

S = 6


def truth(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World-to-camera rotations (S, 3, 3), translations (S, 3) in the reference's units and depth scales (S,)
    of views along a path; view 0 is the reference (identity, scale 1)."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp(torch.randn(S, 3, generator=g, dtype=torch.float64) * 0.2)
    t = torch.randn(S, 3, generator=g, dtype=torch.float64) * 0.5
    scale = torch.exp(torch.randn(S, generator=g, dtype=torch.float64) * 0.3)
    R[0], t[0], scale[0] = torch.eye(3, dtype=torch.float64), 0.0, 1.0
    return R, t, scale


def pair_fit(R, t, scale, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The similarity X_j ~ s R X_i + t between the two views' camera frames, each in its own depth units."""
    R_ij = R[j] @ R[i].T
    return R_ij, scale[j] * (t[j] - R_ij @ t[i]), scale[j] / scale[i]


def all_pairs(R, t, scale, noise: float = 0.0, seed: int = 1, count: int = 50) -> dict:
    g = torch.Generator().manual_seed(seed)
    edges = {}
    for i in range(S):
        for j in range(i + 1, S):
            R_ij, t_ij, s_ij = pair_fit(R, t, scale, i, j)
            turn = so3_exp(torch.randn(3, generator=g, dtype=torch.float64) * noise)
            edges[(i, j)] = (turn @ R_ij, t_ij + noise * torch.randn(3, generator=g, dtype=torch.float64), s_ij, count)
    return edges


def chain(edges: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Poses placed along the path 0 -> 1 -> ... -> S-1 from the pairs (i, i+1) only: what a spanning tree gives."""
    R = torch.eye(3, dtype=torch.float64).repeat(S, 1, 1)
    t, scale = torch.zeros(S, 3, dtype=torch.float64), torch.ones(S, dtype=torch.float64)
    for i in range(S - 1):
        R[i + 1], t[i + 1], scale[i + 1] = place_child(R[i], t[i], scale[i], *edges[(i, i + 1)][:3])
    return R, t, scale


def depth_of(scale: torch.Tensor) -> torch.Tensor:
    return torch.ones(S, 4, 4, dtype=torch.float64) * 3.0 * scale[:, None, None]


def errors(R, t, R_true, t_true) -> tuple[float, float]:
    rot, trans = relative_pose_errors(torch.cat([R, t[..., None]], -1), torch.cat([R_true, t_true[..., None]], -1))
    return float(rot.mean()), float(trans.mean())


def test_consistent_poses_stay_where_they_are():
    R, t, scale = truth()
    out = refine_pose_graph(R, t, scale, all_pairs(R, t, scale), depth_of(scale), 0, set(range(S)))
    for got, want in zip(out, (R, t, scale)):
        assert torch.allclose(got, want, atol=1e-7)


def test_a_misplaced_view_is_pulled_back_onto_its_pairs():
    R, t, scale = truth()
    R_bad, t_bad, scale_bad = R.clone(), t.clone(), scale.clone()
    R_bad[3] = so3_exp(torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)) @ R[3]  # 17 degrees off
    t_bad[3] += 0.4
    scale_bad[3] *= 1.5
    R_out, t_out, scale_out = refine_pose_graph(
        R_bad, t_bad, scale_bad, all_pairs(R, t, scale), depth_of(scale), 0, set(range(S))
    )
    assert errors(R_out, t_out, R, t)[0] < 1e-3 and errors(R_out, t_out, R, t)[1] < 1e-3
    assert torch.allclose(scale_out, scale, rtol=1e-5)
    assert torch.equal(R_out[0], R[0]) and torch.equal(t_out[0], t[0])  # the reference is the gauge


def test_independent_pair_errors_are_spread_not_stacked_along_the_tree():
    R, t, scale = truth()
    noisy = all_pairs(R, t, scale, noise=0.05)  # about 5 degrees and 0.05 units of error on every pair
    tree = chain(noisy)
    graph = refine_pose_graph(*tree, noisy, depth_of(scale), 0, set(range(S)))
    rot_tree, trans_tree = errors(tree[0], tree[1], R, t)
    rot_graph, trans_graph = errors(graph[0], graph[1], R, t)
    assert rot_graph < 0.7 * rot_tree
    assert trans_graph < 0.7 * trans_tree


def test_a_wrong_pair_is_outvoted():
    R, t, scale = truth()
    edges = all_pairs(R, t, scale)
    R_ij, t_ij, s_ij, count = edges[(1, 4)]
    edges[(1, 4)] = (so3_exp(torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64)) @ R_ij, -t_ij, s_ij * 2, count)
    R_out, t_out, _ = refine_pose_graph(*chain(edges), edges, depth_of(scale), 0, set(range(S)))
    rot, trans = errors(R_out, t_out, R, t)
    assert rot < 0.5 and trans < 1.0  # degrees: the 34-degree pair does not bend the others


def test_views_outside_the_placed_set_are_left_alone():
    R, t, scale = truth()
    start = (R.clone(), t.clone() + 0.1, scale.clone())
    out = refine_pose_graph(*start, all_pairs(R, t, scale), depth_of(scale), 0, {0, 1, 2})
    for got, want in zip(out, start):
        assert torch.equal(got[3:], want[3:])


def test_the_solver_keeps_the_tree_beyond_graph_up_to(monkeypatch):
    depth, features = scene(three_cameras())
    args = (features, depth, K.expand(1, 3, 3, 3), torch.tensor([0]))
    tree = match_pose.cameras_from_matches(*args, refine=False).extrinsics
    graph = match_pose.cameras_from_matches(*args).extrinsics
    assert not torch.allclose(tree, graph, atol=1e-6)  # three views: the graph has a pair outside the tree
    monkeypatch.setattr(match_pose, "GRAPH_UP_TO", 2)
    assert torch.equal(match_pose.cameras_from_matches(*args).extrinsics, tree)
