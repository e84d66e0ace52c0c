"""The cross-view matching loss: ground-truth patch correspondences and the InfoNCE over them."""

from __future__ import annotations

import math

import torch

from da3_splat.train.matching import matching_loss, patch_correspondences

H, W, h, w = 42, 70, 3, 5  # 14-pixel patches
K = torch.tensor([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])


def _wall_views(shift_x: float, depth: float = 5.0, hide: bool = False):
    """Two cameras facing a fronto-parallel wall at ``depth``; the second moved ``shift_x`` along +x (its image
    content moves left). ``hide``: the second view sees a nearer occluder everywhere instead."""
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = -shift_x
    d = torch.full((2, H, W), depth)
    if hide:
        d[1] = depth / 2
    return d, w2c, K.expand(2, 3, 3)


def test_correspondences_follow_the_camera_motion():
    same = patch_correspondences(*_wall_views(0.0), h, w, 0, 1)
    assert torch.equal(same, torch.arange(h * w))
    # One patch to the right at depth 5 is 14 px * 5 / 50 = 1.4 m: view 0's column c is view 1's column c - 1.
    moved = patch_correspondences(*_wall_views(1.4), h, w, 0, 1).view(h, w)
    assert (moved[:, 0] == -1).all()  # left the image
    assert torch.equal(moved[:, 1:], torch.arange(h * w).view(h, w)[:, :-1])
    back = patch_correspondences(*_wall_views(1.4), h, w, 1, 0).view(h, w)
    assert (back[:, -1] == -1).all() and torch.equal(back[:, :-1], torch.arange(h * w).view(h, w)[:, 1:])


def test_hidden_and_unknown_points_have_no_correspondence():
    assert (patch_correspondences(*_wall_views(0.0, hide=True), h, w, 0, 1) == -1).all()
    d, w2c, k = _wall_views(0.0)
    d[0, :14] = 0.0  # unknown depth in the first patch row
    got = patch_correspondences(d, w2c, k, h, w, 0, 1).view(h, w)
    assert (got[0] == -1).all() and (got[1:] >= 0).all()


def test_infonce_is_least_for_matching_features_and_log_p_for_blind_ones():
    d, w2c, k = _wall_views(1.4)
    batch = (d[None], w2c[None], k[None])
    # Features that name the wall point: matched patches share a one-hot vector, all others are orthogonal (view 1's
    # last column sees wall that view 0 does not: vectors of its own).
    P = h * w
    row, col = torch.arange(P) // w, torch.arange(P) % w
    view0 = torch.nn.functional.one_hot(torch.arange(P), P + h).float()
    view1 = torch.nn.functional.one_hot(torch.where(col < w - 1, row * w + col + 1, P + row), P + h).float()
    loss, acc = matching_loss(torch.stack([view0, view1])[None], *batch, temperature=0.1)
    best = math.log(1 + (P - 1) * math.exp(-10.0))  # cosine 1 for the match, 0 for the others, over temperature 0.1
    assert math.isclose(float(loss), best, rel_tol=1e-3) and float(acc) == 1.0
    blind, acc = matching_loss(torch.ones(1, 2, h * w, 8), *batch)
    assert math.isclose(float(blind), math.log(h * w), rel_tol=1e-6)


def test_no_correspondence_gives_a_finite_zero_with_a_graph():
    d, w2c, k = _wall_views(0.0, hide=True)
    f = torch.randn(1, 2, h * w, 4, requires_grad=True)
    loss, acc = matching_loss(f, d[None], w2c[None], k[None])
    loss.backward()
    assert float(loss) == 0.0 and float(acc) == 0.0 and f.grad is not None
