"""Loop closure of streaming runs (da3_splat.streaming_loops): revisits found from thumbnails, measured by one
extra pass, closed by a Sim(3) pose graph; checked on a closed synthetic orbit with a stand-in model whose
cameras drift inside every pass, so the chain of chunk fits drifts as a real model's does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.errors import InputError
from da3_splat.geometry import quat_xyzw_to_matrix
from da3_splat.geometry_metrics import relative_pose_errors
from da3_splat.inputs import chunking
from da3_splat.streaming import chunk_ranges, describe_chunk, infer_streaming
from da3_splat.streaming_loops import (
    edge_residual,
    frame_descriptors,
    loop_candidates,
    optimise_chunk_graph,
    sim3_matrix,
    sim3_parts,
)
from tests.streaming_stand_in import (
    DriftingModel,
    PerfectModel,
    aligned_errors,
    assert_gaussians_and_rays_follow_cameras,
    f64,
    random_rotation,
)

FRAMES, CHUNK, OVERLAP = 96, 12, 4


@pytest.fixture(scope="module")
def loop_scene():
    return render_scene(SyntheticConfig(frames=FRAMES, height=40, width=64, trajectories=("loop",)), 5)


def _pair_error(pred, scene, p, q) -> float:
    rot, _ = relative_pose_errors(f64(pred.extrinsics[[p, q]]), f64(scene.w2c[[p, q]]))
    return float(rot[0])


def test_a_revisit_is_found_measured_and_closed(loop_scene):
    frames = list(range(FRAMES))
    open_model, closed_model = DriftingModel(loop_scene), DriftingModel(loop_scene)
    chain = infer_streaming(open_model, frames, CHUNK, OVERLAP)
    lines: list[str] = []
    closed = infer_streaming(
        closed_model, frames, CHUNK, OVERLAP, loop_closure=True, progress=lambda i: lines.append(describe_chunk(i))
    )
    report = closed.extra["streaming"]["loop_closure"]
    assert report["applied"] == 1
    (loop,) = [x for x in report["loops"] if "drift" in x]
    p, q = loop["frames"]
    # the orbit turns 1.1 times: frame p near the start is seen again near the end
    assert p < FRAMES * 0.15 and q > FRAMES * 0.85
    assert loop["drift"]["rotation_deg"] > 3 and loop["drift_after"]["rotation_deg"] < loop["drift"]["rotation_deg"] / 5
    assert any(line.startswith("loop 1: frames") and "drift" in line for line in lines)
    # the chain's drift at the revisit is mostly gone, and the whole trajectory is closer to the truth
    before, after = _pair_error(chain, loop_scene, p, q), _pair_error(closed, loop_scene, p, q)
    assert before > 4 and after < before / 3
    rot_chain, centre_chain, _ = aligned_errors(chain, loop_scene)
    rot_closed, centre_closed, depth = aligned_errors(closed, loop_scene)
    assert rot_closed.mean() < 0.8 * rot_chain.mean() and centre_closed.mean() < 0.8 * centre_chain.mean()
    assert np.median(depth) < 0.02  # depth moved with its chunk's scale, not against it
    # one extra pass, never larger than a chunk
    assert len(closed_model.calls) == len(open_model.calls) + 1
    assert max(len(c) for c in closed_model.calls) <= CHUNK


def test_closed_loops_move_gaussians_and_rays_with_their_cameras(loop_scene):
    pred = infer_streaming(
        DriftingModel(loop_scene), list(range(FRAMES)), CHUNK, OVERLAP, loop_closure=True, infer_gs=True,
        return_rays=True,
    )  # fmt: skip
    assert pred.extra["streaming"]["loop_closure"]["applied"] == 1
    assert_gaussians_and_rays_follow_cameras(pred)


def test_an_unverified_loop_is_reported_and_not_used(loop_scene):
    frames = list(range(FRAMES))
    chain = infer_streaming(DriftingModel(loop_scene), frames, CHUNK, OVERLAP)
    model = DriftingModel(loop_scene, break_call=len(chunk_ranges(FRAMES, CHUNK, OVERLAP)))  # the loop's pass
    closed = infer_streaming(model, frames, CHUNK, OVERLAP, loop_closure=True)
    report = closed.extra["streaming"]["loop_closure"]
    assert report["applied"] == 0 and report["candidates"] >= 1
    assert "finite cameras" in report["loops"][0]["rejected"]
    np.testing.assert_array_equal(closed.extrinsics, chain.extrinsics)
    assert "not used" in describe_chunk(report["loops"][0])


def test_no_revisit_no_loop_and_known_poses_ignore_it():
    scene = render_scene(SyntheticConfig(frames=40, height=40, width=64, trajectories=("dolly",)), 2)
    model = PerfectModel(scene)
    pred = infer_streaming(model, list(range(40)), 10, 3, loop_closure=True)
    assert pred.extra["streaming"]["loop_closure"] == {"candidates": 0, "applied": 0, "loops": []}
    known = PerfectModel(scene)
    pred = infer_streaming(known, list(range(40)), 10, 3, extrinsics=scene.w2c, intrinsics=scene.K, loop_closure=True)
    assert pred.extra["streaming"]["loop_closure"] is None and len(known.calls) == len(model.calls)


def test_candidates_are_returns_one_per_neighbourhood():
    """Random frames, each unlike the others, except that frames 25 and 26 return to frames 3 and 4."""
    rng = np.random.default_rng(0)
    desc = frame_descriptors(rng.integers(0, 255, (30, 24, 32, 3), dtype=np.uint8))
    desc[25] = desc[3]  # a return
    desc[26] = desc[4] + 0.05 * desc[26]  # the same return one frame later: a weaker duplicate
    desc[:] /= np.linalg.norm(desc, axis=1, keepdims=True)
    found = loop_candidates(desc, np.arange(30) // 3, max_candidates=5)  # chunks of 3 frames
    assert [(p, q) for p, q, _ in found] == [(3, 25)]  # and not (4, 26), the same loop again
    assert found[0][2] == pytest.approx(1.0, abs=1e-6)
    owner = np.zeros(30, int)
    owner[20:] = 1  # the return is in the next chunk: nothing to close
    assert loop_candidates(desc, owner, max_candidates=5) == []
    # a slow start: frames 0-9 all look alike and the view never leaves, so no pair of them is a return
    slow = desc.copy()
    slow[1:10] = slow[0] + 0.1 * slow[1:10]
    slow[:] /= np.linalg.norm(slow, axis=1, keepdims=True)
    assert slow[0] @ slow[9] > 0.93
    assert loop_candidates(slow, np.arange(30), max_candidates=50) == []
    flat = frame_descriptors(np.full((2, 8, 8, 3), 7, np.uint8))
    assert np.all(flat == 0)


def test_pose_graph_spreads_a_loop_rotation_evenly_along_the_chain():
    """Six chunks around one centre and one loop measuring a 12-degree turn about it: least squares on the six
    identical links (five consecutive, one loop) gives each 1/6 of the turn, so chunk k is turned by 2k degrees."""
    rng = np.random.default_rng(1)
    centre = np.array([0.3, -0.2, 1.0])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    R = quat_xyzw_to_matrix(f64([*(np.sin(np.radians(6)) * axis), np.cos(np.radians(6))]))
    t = torch.from_numpy(centre) - R @ torch.from_numpy(centre)  # a turn about the centre
    M = sim3_matrix(R, t, 1.0)
    C = optimise_chunk_graph(np.tile(centre, (6, 1)), [(0, 5, M, centre)], length=2.0)
    np.testing.assert_allclose(C[0], np.eye(4))
    for k in range(6):
        Rk, tk, sk = sim3_parts(C[k])
        angle = np.degrees(np.arccos(np.clip((float(torch.trace(Rk)) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(2 * k, abs=1e-3)
        assert float(sk) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose((C[k] @ [*centre, 1])[:3], centre, atol=1e-6)  # turned about the centre
    # the loop's own residual is the remaining sixth
    E = torch.from_numpy(np.linalg.inv(M) @ np.linalg.inv(C[0]) @ C[5])[None]
    r = edge_residual(E, torch.from_numpy(centre)[None], 2.0)[0]
    assert float(r[:3].norm()) == pytest.approx(2.0, abs=1e-3)


def test_similarity_matrix_round_trip():
    rng = np.random.default_rng(2)
    R, t, s = random_rotation(rng), f64(rng.normal(size=3)), 2.5
    R2, t2, s2 = sim3_parts(sim3_matrix(R, t, s))
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    assert float(s2) == pytest.approx(s)


class _Cfg:
    def __init__(self, **kw):
        self.__dict__.update(dict(chunk_size=None, chunk_overlap=None, poses=None, loop_closure=False) | kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loop_closure": True}, "needs --chunk-size"),
        ({"loop_closure": True, "chunk_size": 8, "poses": "t.json"}, "pose-free"),
    ],  # fmt: skip
)
def test_loop_closure_options_are_checked(kw, match):
    with pytest.raises(InputError, match=match):
        chunking(_Cfg(**kw))
    assert chunking(_Cfg(loop_closure=True, chunk_size=8)) == (8, 2)


def test_loop_closure_on_the_bundled_model(loop_scene):
    """The real tiny model through the streaming library predict uses. Its depth (AbsRel about 0.26) disagrees
    between passes by 5% to 9% of the scene on this orbit, above the 5% default gate that guards real checkpoints'
    merges, so the gate is widened here: the loop search, verification and record run on real outputs."""
    from da3_splat.model import DA3

    model = DA3.from_pretrained("da3-tiny-synthetic").eval()
    pred = infer_streaming(model, list(loop_scene.images[::2]), 8, loop_closure=True, max_residual=0.15)
    info = pred.extra["streaming"]["loop_closure"]
    assert info["candidates"] >= 1 and len(info["loops"]) == info["candidates"]
    assert all(("drift" in x) != ("rejected" in x) for x in info["loops"])
