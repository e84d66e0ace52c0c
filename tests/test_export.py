"""Writers for a prediction: PLY, colourised depth, the output folder layout, atomic writes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from plyfile import PlyData

from da3_splat.data.transforms import read_transforms
from da3_splat.export import (
    colorize_depth,
    confident_world_points,
    write_point_cloud_ply,
    write_prediction,
)
from da3_splat.geometry import quat_xyzw_to_matrix
from da3_splat.model.inference import Prediction

S, H, W = 3, 6, 8


def _prediction(cameras: bool = True, seed: int = 0) -> Prediction:
    import torch

    rng = np.random.default_rng(seed)
    R = quat_xyzw_to_matrix(torch.from_numpy(rng.normal(size=(S, 4)))).numpy()
    w2c = np.concatenate([R, rng.normal(size=(S, 3, 1))], -1).astype(np.float32)
    K = np.tile(np.array([[10.0, 0, 4], [0, 11.0, 3], [0, 0, 1]], np.float32), (S, 1, 1))
    return Prediction(
        depth=rng.uniform(1, 5, (S, H, W)).astype(np.float32),
        depth_conf=rng.uniform(1, 3, (S, H, W)).astype(np.float32),
        processed_images=rng.integers(0, 255, (S, H, W, 3), dtype=np.uint8),
        extrinsics=w2c if cameras else None,
        intrinsics=K if cameras else None,
    )


def _manual_points(pred: Prediction) -> np.ndarray:
    out = []
    for s in range(S):
        v, u = np.mgrid[0:H, 0:W] + 0.5  # pixel (row i, col j) is the image point (j + 0.5, i + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
        cam = (np.linalg.inv(pred.intrinsics[s]) @ pix.T).T * pred.depth[s].reshape(-1, 1)
        R, t = pred.extrinsics[s, :, :3].astype(np.float64), pred.extrinsics[s, :, 3].astype(np.float64)
        out.append((cam - t) @ R)  # R^T (X - t), row-wise
    return np.concatenate(out)


def test_ply_round_trip(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    cols = np.random.default_rng(1).integers(0, 255, (50, 3), dtype=np.uint8)
    path = write_point_cloud_ply(tmp_path / "p.ply", pts, cols)
    ply = PlyData.read(str(path))
    assert ply.elements[0].name == "vertex" and not ply.text
    v = ply["vertex"].data
    assert [v.dtype[n].str for n in ("x", "y", "z", "red", "green", "blue")] == ["<f4"] * 3 + ["|u1"] * 3
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), pts)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), cols)
    with pytest.raises(ValueError):
        write_point_cloud_ply(tmp_path / "q.ply", pts, cols.astype(np.float32))


def test_colorize_depth():
    depth = np.tile(np.linspace(1, 10, 32, dtype=np.float32), (16, 1))
    depth[0, 0], depth[0, 1] = 0.0, np.nan
    rgb = colorize_depth(depth)
    assert rgb.shape == (16, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[0, :2] == 0).all()  # invalid pixels are black
    near, far = rgb[8, 2].astype(int), rgb[8, -1].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # turbo: near is red, far is blue
    assert colorize_depth(np.full((4, 4), 2.0, np.float32)).shape == (4, 4, 3)  # constant depth is fine


def test_confident_points_filter_and_subsample():
    pred = _prediction()
    pts, cols = confident_world_points(pred, conf_percentile=50, max_points=10**9)
    keep = pred.depth_conf.reshape(-1) >= np.percentile(pred.depth_conf, 50)
    np.testing.assert_allclose(pts, _manual_points(pred)[keep], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(cols, pred.processed_images.reshape(-1, 3)[keep])
    sub, _ = confident_world_points(pred, conf_percentile=0, max_points=7)
    again, _ = confident_world_points(pred, conf_percentile=0, max_points=7)
    assert sub.shape == (7, 3)
    np.testing.assert_array_equal(sub, again)  # fixed seed
    all_pts, _ = confident_world_points(pred, conf_percentile=0, max_points=10**9)
    assert all_pts.shape[0] == S * H * W
    assert all(any(np.allclose(p, q) for q in all_pts) for p in sub)


def test_write_prediction_layout(tmp_path):
    pred = _prediction()
    names = ["a", "b", "c"]
    calls = []
    info = write_prediction(
        pred, tmp_path, names, summary={"model": "m", "timings_s": {"inference": 1.0}}, progress=calls.append
    )
    assert len(calls) == S + 3
    for n in names:
        img = cv2.imread(str(tmp_path / "images" / f"{n}.png"))
        assert img.shape == (H, W, 3)
        assert cv2.imread(str(tmp_path / "depth" / f"{n}.png")).shape == (H, W, 3)
        assert cv2.imread(str(tmp_path / "confidence" / f"{n}.png"), cv2.IMREAD_UNCHANGED).shape == (H, W)
        with np.load(tmp_path / "depth" / f"{n}.npz") as z:
            assert z["depth"].shape == (H, W) and z["depth"].dtype == np.float32
            assert z["depth_conf"].shape == (H, W) and z["depth_conf"].dtype == np.float32
    i = names.index("b")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "images/b.png"))[..., ::-1], pred.processed_images[i])
    files, w2c, K, sizes = read_transforms(tmp_path / "transforms.json")
    assert files == [f"images/{n}.png" for n in names] and (sizes == [H, W]).all()
    np.testing.assert_allclose(w2c[:, :3], pred.extrinsics, atol=1e-5)
    np.testing.assert_allclose(K, pred.intrinsics, atol=1e-5)
    assert json.loads((tmp_path / "transforms.json").read_text())["ply_file_path"] == "points.ply"
    summary = json.loads((tmp_path / "prediction.json").read_text())
    assert summary == info and summary["num_views"] == S and summary["processed_size"] == [H, W]
    assert summary["model"] == "m" and set(summary["timings_s"]) == {"inference", "write"}
    assert len(PlyData.read(str(tmp_path / "points.ply"))["vertex"].data) == summary["num_points"] > 0
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind

    # A second run with fewer views into the same folder drops the views it did not write, nothing else.
    (tmp_path / "notes.txt").write_text("mine")
    pred2 = _prediction(seed=1)
    pred2 = Prediction(
        **{k: getattr(pred2, k)[:2] for k in ("depth", "depth_conf", "processed_images", "extrinsics", "intrinsics")}
    )
    write_prediction(pred2, tmp_path, ["a", "b"])
    assert not (tmp_path / "images/c.png").exists() and not (tmp_path / "depth/c.npz").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "images/a.png").exists()
    assert len(read_transforms(tmp_path)[0]) == 2


def test_write_prediction_without_cameras(tmp_path):
    info = write_prediction(_prediction(cameras=False), tmp_path, ["a", "b", "c"])
    assert not info["has_cameras"] and info["num_points"] == 0
    assert not (tmp_path / "transforms.json").exists() and not (tmp_path / "points.ply").exists()
    assert (tmp_path / "depth/a.npz").exists()


def test_write_prediction_needs_distinct_names(tmp_path):
    with pytest.raises(ValueError):
        write_prediction(_prediction(), tmp_path, ["a", "a", "b"])
