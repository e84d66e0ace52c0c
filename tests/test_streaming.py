"""Streaming inference (da3_splat.streaming): chunks merged into one frame, checked against a stub "perfect model"
that returns ground truth for the frames it is given, each call in its own random similarity frame; plus the
predict command with --chunk-size on the bundled model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.errors import InputError
from da3_splat.geometry import (
    apply_sim3_to_w2c,
)
from da3_splat.streaming import check_chunking, chunk_ranges, describe_chunk, infer_streaming
from tests.cli_helpers import assert_user_error, run_cli
from tests.streaming_stand_in import (
    PerfectModel,
    aligned_errors,
    assert_gaussians_and_rays_follow_cameras,
    f64,
    random_rotation,
)


@pytest.fixture(scope="module")
def scene():
    return render_scene(SyntheticConfig(frames=20, height=40, width=64), 3)  # an orbit: centres fix rotation


# --------------------------------------------------------------------------------------------------
# Chunking


def test_chunks_cover_the_frames_with_full_chunks_and_the_overlap():
    assert chunk_ranges(5, 8, 2) == [(0, 5)]
    assert chunk_ranges(20, 8, 3) == [(0, 8), (5, 13), (10, 18), (12, 20)]
    for n, size, ov in ((100, 10, 3), (33, 7, 2), (9, 8, 4)):
        r = chunk_ranges(n, size, ov)
        assert r[0][0] == 0 and r[-1][1] == n and all(b - a == size for a, b in r)
        assert all(b0 - a1 >= ov for (_, b0), (a1, _) in zip(r, r[1:]))


@pytest.mark.parametrize(
    ("size", "overlap", "known", "match"),
    [(2, 1, False, "at least 3"), (1, 0, True, "at least 2"), (6, 6, False, "smaller than"), (6, 1, False, "least 2")],
)
def test_bad_chunking_is_one_line(size, overlap, known, match):
    with pytest.raises(InputError, match=match) as e:
        check_chunking(size, overlap, known)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------
# Pose-free


def test_perfect_chunks_merge_into_one_frame_exactly(scene):
    model = PerfectModel(scene, seed=1)
    pred = infer_streaming(model, list(range(20)), chunk_size=8, overlap=3)
    assert pred.num_views == 20 and len(model.calls) == 4
    rot, centre, depth = aligned_errors(pred, scene)
    assert rot.max() < 1e-3 and centre.max() < 1e-4 and depth.max() < 1e-4, (rot.max(), centre.max(), depth.max())
    info = pred.extra["streaming"]
    assert info["mode"] == "pose-free" and [(c["start"], c["stop"]) for c in info["chunks"]] == chunk_ranges(20, 8, 3)
    assert all(c["residual"] < 1e-5 and c["inliers"] == c["points"] > 1000 for c in info["chunks"][1:])
    assert np.array_equal(pred.processed_images, scene.images) and np.allclose(pred.intrinsics, scene.K)


def test_noise_and_an_outlier_frame_in_the_overlap_are_tolerated(scene):
    # call 1 is chunk 2 (frames 5-12); its view 1 is frame 6, inside the overlap with chunk 1
    model = PerfectModel(scene, seed=2, depth_noise=0.005, pose_noise_deg=0.2, outlier=(1, 1))
    pred = infer_streaming(model, list(range(20)), chunk_size=8, overlap=3)
    rot, centre, depth = aligned_errors(pred, scene)
    assert rot.max() < 1.0 and centre.max() < 0.03 and np.median(depth) < 0.02, (rot.max(), centre.max())
    chunk2 = pred.extra["streaming"]["chunks"][1]
    assert chunk2["points"] * 0.55 < chunk2["inliers"] < chunk2["points"] * 0.8  # a third of the points dropped


@pytest.mark.parametrize(("broken", "match"), [("cameras", "finite cameras"), ("depth", "confident pixels")])
def test_an_unusable_overlap_is_a_one_line_error_naming_the_chunk(scene, broken, match):
    with pytest.raises(InputError, match=match) as e:
        infer_streaming(PerfectModel(scene, broken=broken), list(range(20)), chunk_size=8, overlap=3)
    assert "chunk 2/4 (frames 6-13)" in str(e.value) and "\n" not in str(e.value)


def test_an_overlap_that_cannot_be_trusted_falls_back_to_anchor_frames(scene):
    class OverlapBlind(PerfectModel):  # a plain chunk's overlap views come back broken; with anchors they do not
        def infer(self, images, **kw):
            pred = super().infer(images, **kw)
            if len(self.calls) > 1 and len(images) == 8:
                pred.depth[:3] = np.nan
            return pred

    model = OverlapBlind(scene, seed=4)
    pred = infer_streaming(model, list(range(20)), chunk_size=8, overlap=3)
    rot, centre, depth = aligned_errors(pred, scene)
    assert rot.max() < 1e-3 and centre.max() < 1e-4 and np.nanmax(depth) < 1e-4
    chunks = pred.extra["streaming"]["chunks"]
    # chunks 2 and 3 share 3 frames, all broken; the last chunk (moved back) shares 6, 3 of them intact
    assert [c.get("fallback", "")[:7] for c in chunks] == ["", "anchors", "anchors", ""]
    assert "confident pixels" in chunks[1]["overlap_failure"]
    assert max(len(c) for c in model.calls) == 8 + 4  # the chunk and 4 anchors: still bounded by the chunk size
    assert "aligned through anchors" in describe_chunk(chunks[1])


def test_a_wrong_overlap_is_refused_not_merged(scene):
    class Shuffled(PerfectModel):  # chunk 2 sees other frames than it is told: nothing agrees
        def infer(self, images, **kw):
            return super().infer([(i + 7) % 20 for i in images] if self.calls else images, **kw)

    with pytest.raises(InputError, match=r"chunk 2/4 .* shared points agree within 5% of depth"):
        infer_streaming(Shuffled(scene), list(range(20)), chunk_size=8, overlap=3)


def test_gaussians_and_rays_follow_the_merged_cameras(scene):
    pred = infer_streaming(PerfectModel(scene, seed=3), list(range(20)), 8, 3, infer_gs=True, return_rays=True)
    assert_gaussians_and_rays_follow_cameras(pred)


def test_peak_views_per_pass_is_the_chunk_size(scene):
    long = render_scene(SyntheticConfig(frames=100, height=40, width=64), 3)
    model = PerfectModel(long, seed=4)
    pred = infer_streaming(model, list(range(100)), chunk_size=10, overlap=3)
    assert max(len(c) for c in model.calls) == 10 and pred.num_views == 100
    rot, centre, depth = aligned_errors(pred, long)
    assert rot.max() < 1e-2 and centre.max() < 1e-3 and depth.max() < 1e-3


# --------------------------------------------------------------------------------------------------
# Known poses


def test_known_poses_stay_in_the_callers_frame_and_report_disagreement(scene):
    R, t, s = random_rotation(np.random.default_rng(5)), f64([1.0, -2.0, 0.5]), f64(2.0)
    given = apply_sim3_to_w2c(f64(scene.w2c), R, t, s).float().numpy()
    model = PerfectModel(scene, seed=5, depth_noise=0.01, scale=2.0)
    pred = infer_streaming(model, list(range(20)), 8, 3, extrinsics=given, intrinsics=scene.K)
    assert np.allclose(pred.extrinsics, given[:, :3], atol=1e-6) and np.allclose(pred.intrinsics, scene.K)
    assert np.median(np.abs(pred.depth / (2 * scene.depth) - 1)) < 0.02
    info = pred.extra["streaming"]
    assert info["mode"] == "known poses" and 0.003 < info["depth_disagreement"] < 0.03
    assert all(0 < c["depth_disagreement"] < 0.03 for c in info["chunks"][1:]) and info["chunks"][0]["scale"] == 1.0


# --------------------------------------------------------------------------------------------------
# The predict command on the bundled model


@pytest.fixture(scope="module")
def twelve_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream") / "images"
    d.mkdir()
    frames = render_scene(SyntheticConfig(frames=12, height=72, width=128), 5).images
    for i, img in enumerate(frames):
        cv2.imwrite(str(d / f"frame_{i:02d}.png"), img[..., ::-1])
    return d


def test_predict_streams_chunks_on_the_bundled_model(twelve_images, tmp_path):
    out = tmp_path / "out"
    res = run_cli("predict", twelve_images, "-o", out, "--model", "da3-tiny-synthetic", "--chunk-size", 6,
                  "--chunk-overlap", 3)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("chunk ")][-1].startswith("chunk 3/3")
    frames = json.loads((out / "transforms.json").read_text())["frames"]
    assert len(frames) == 12 and all(np.isfinite(f["transform_matrix"]).all() for f in frames)
    info = json.loads((out / "prediction.json").read_text())
    assert info["streaming"]["chunk_size"] == 6 and len(info["streaming"]["chunks"]) == 3


def test_the_merge_gate_reaches_the_library_and_its_refusal_is_one_line(twelve_images, tmp_path):
    res = run_cli("predict", twelve_images, "-o", tmp_path / "out", "--model", "da3-tiny-synthetic", "--chunk-size", 6,
                  "--chunk-overlap", 3, "--max-merge-residual", 1e-9)  # fmt: skip
    last = res.stderr.strip().splitlines()[-1]  # after the progress line of the chunk that merged
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert last.startswith("error: ") and "chunk 2/3" in last and "a looser merge gate (now 1e-09 of the scene)" in last
    assert not (tmp_path / "out" / "prediction.json").exists()  # nothing written for a refused run


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (("--chunk-size", 1), "--chunk-size must be at least 3"),
        (("--chunk-size", 6, "--chunk-overlap", 6), "--chunk-overlap (6) must be smaller than --chunk-size (6)"),
        (("--chunk-overlap", 3), "--chunk-overlap needs --chunk-size"),
        (("--loop-closure",), "--loop-closure needs --chunk-size"),
        (("--max-merge-residual", 0.2), "--max-merge-residual needs --chunk-size"),
        (("--chunk-size", 6, "--max-merge-residual", 0), "--max-merge-residual must be positive"),
    ],
)
def test_bad_chunk_flags_fail_before_the_model_loads(twelve_images, tmp_path, flags, match):
    res = run_cli("predict", twelve_images, "-o", tmp_path / "o", "--model", "no/such-model", *flags)
    assert_user_error(res, match)
