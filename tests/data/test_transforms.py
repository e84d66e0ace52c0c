"""nerfstudio transforms.json: conventions, round trips, and one-line errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from da3_splat.data.transforms import read_transforms, write_transforms
from da3_splat.geometry import quat_xyzw_to_matrix
from da3_splat.model.preprocess import InputError


def _cameras(S, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = quat_xyzw_to_matrix(torch.randn(S, 4, generator=g, dtype=torch.float64))
    w2c = torch.cat([R, 3 * torch.randn(S, 3, 1, generator=g, dtype=torch.float64)], -1).numpy()
    K = np.array([[[500.0 + i, 0, 320.5], [0, 510.0 - i, 240.25], [0, 0, 1]] for i in range(S)])
    return w2c, K


def _write_json(path, meta):
    path.write_text(json.dumps(meta))
    return path


def test_round_trip_per_frame_intrinsics(tmp_path):
    w2c, K = _cameras(4)
    sizes = [(480, 640), (480, 640), (360, 640), (480, 600)]
    write_transforms(tmp_path / "transforms.json", [f"images/f{i}.png" for i in range(4)], w2c, K, sizes)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["k1"] == meta["p2"] == 0.0
    assert "fl_x" not in meta and "ply_file_path" not in meta  # frames differ: per-frame intrinsics only
    assert meta["frames"][2]["h"] == 360 and meta["frames"][3]["w"] == 600
    paths, w2c2, K2, sizes2 = read_transforms(tmp_path)  # a folder works too
    assert paths == [f"images/f{i}.png" for i in range(4)]
    np.testing.assert_allclose(w2c2[:, :3], w2c, atol=1e-9)
    np.testing.assert_allclose(w2c2[:, 3], np.tile([0, 0, 0, 1.0], (4, 1)))
    np.testing.assert_allclose(K2, K)
    assert sizes2.tolist() == [list(s) for s in sizes]


def test_shared_intrinsics_go_to_top_level(tmp_path):
    w2c, K = _cameras(3)
    K[:] = K[0]
    f = write_transforms(
        tmp_path / "t.json", ["a.png", "b.png", "c.png"], w2c, K, [(100, 200)] * 3, ply_file_path="points.ply"
    )
    meta = json.loads(f.read_text())
    intr = tuple(meta[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"))
    assert intr == (500, 510, 320.5, 240.25, 200, 100)
    assert meta["ply_file_path"] == "points.ply"
    np.testing.assert_allclose(read_transforms(f)[2], K)


def test_opengl_convention(tmp_path):
    # An OpenGL camera at (1, 2, 3) with identity rotation looks down -z with y up: in OpenCV axes its
    # world-to-camera rotation is diag(1, -1, -1).
    c2w = np.eye(4)
    c2w[:3, 3] = [1, 2, 3]
    meta = {
        "fl_x": 100,
        "fl_y": 100,
        "cx": 50,
        "cy": 40,
        "w": 100,
        "h": 80,
        "frames": [{"file_path": "images/x.jpg", "transform_matrix": c2w.tolist()}],
    }
    _, w2c, K, sizes = read_transforms(_write_json(tmp_path / "transforms.json", meta))
    R = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(w2c[0, :3, :3], R)
    np.testing.assert_allclose(w2c[0, :3, 3], -R @ [1, 2, 3])
    assert K[0, 0, 2] == 50 and sizes.tolist() == [[80, 100]]
    # ... and writing it back gives the same transform_matrix.
    write_transforms(tmp_path / "back.json", ["images/x.jpg"], w2c, K, sizes)
    back = json.loads((tmp_path / "back.json").read_text())["frames"][0]["transform_matrix"]
    np.testing.assert_allclose(back, c2w, atol=1e-12)


def test_top_level_wins_like_nerfstudio(tmp_path):
    meta = {
        "fl_x": 100,
        "fl_y": 100,
        "cx": 50,
        "cy": 40,
        "w": 100,
        "h": 80,
        "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 7, "h": 80, "w": 100}],
    }
    assert read_transforms(_write_json(tmp_path / "t.json", meta))[2][0, 0, 0] == 100


def _frame(**kw):
    return {"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist(), **kw}


_INTR = {"fl_x": 100, "fl_y": 100, "cx": 50, "cy": 40, "w": 100, "h": 80}


@pytest.mark.parametrize(
    "meta, match",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "no 'frames' list"),
        ({**_INTR, "frames": []}, "has no frames"),
        ({**_INTR, "frames": [{"file_path": "images/a.png"}]}, "no 'transform_matrix'"),
        ({**_INTR, "frames": [{"transform_matrix": np.eye(4).tolist()}]}, "no 'file_path'"),
        ({**_INTR, "frames": [_frame(file_path="../outside/a.png")]}, "outside the folder"),
        ({**_INTR, "frames": [_frame(file_path="images/../../a.png")]}, "outside the folder"),
        ({**_INTR, "frames": [_frame(file_path="/etc/passwd")]}, "absolute"),
        ({**_INTR, "frames": [_frame(transform_matrix=[[1, 0], [0, 1]])]}, "4x4"),
        ({**_INTR, "frames": [_frame(transform_matrix=(2 * np.eye(4)).tolist())]}, "not a rigid"),
        ({**_INTR, "frames": [_frame(transform_matrix=[["a"] * 4] * 4)]}, "not a numeric"),
        ({"fl_x": 100, "frames": [_frame()]}, "no 'fl_y'"),
        ({**_INTR, "fl_x": "big", "frames": [_frame()]}, "finite number"),
        ({**_INTR, "w": 0, "frames": [_frame()]}, "invalid intrinsics"),
        ({**_INTR, "camera_model": "OPENCV_FISHEYE", "frames": [_frame()]}, "not supported"),
    ],
)
def test_bad_files_raise_one_line_input_errors(tmp_path, meta, match):
    path = tmp_path / "transforms.json"
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(InputError, match=match) as info:
        read_transforms(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_transforms(tmp_path / "nope.json")
    with pytest.raises(InputError, match="not found"):
        read_transforms(tmp_path)  # a folder without transforms.json


def _with_entry(r, c, value):
    m = np.eye(4).tolist()
    m[r][c] = value
    return m


@pytest.mark.parametrize(
    "literal, shown, r, c",
    [("NaN", "nan", 0, 3), ("Infinity", "inf", 2, 1), ("-Infinity", "-inf", 1, 1), ("1e400", "inf", 3, 3)],
)
def test_non_finite_pose_entry_is_named(tmp_path, literal, shown, r, c):
    # json (Python's, like many writers) accepts NaN/Infinity literals, and 1e400 overflows to inf when parsed.
    frames = [_frame(file_path="images/a.png"), _frame(file_path="images/b.png")]
    frames[1]["transform_matrix"] = _with_entry(r, c, 12345.0)
    text = json.dumps({**_INTR, "frames": frames}).replace("12345.0", literal)
    path = tmp_path / "transforms.json"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_transforms(path)
    msg = str(info.value)
    assert f"frame 1 (images/b.png): transform_matrix has a non-finite value ({shown} at row {r}, col {c})" in msg
    assert str(path) in msg and "\n" not in msg and "got shape" not in msg


@pytest.mark.parametrize(
    "meta, field",
    [
        # translations far beyond any photographed scene (and beyond what float32 downstream resolves)
        ({**_INTR, "frames": [_frame(transform_matrix=_with_entry(0, 3, 1e200))]}, "transform_matrix[0][3]"),
        ({**_INTR, "frames": [_frame(transform_matrix=_with_entry(2, 3, -2e6))]}, "transform_matrix[2][3]"),
        # huge or vanishing focal lengths, principal points and sizes
        ({**_INTR, "fl_x": 1e308, "frames": [_frame()]}, "'fl_x'"),
        ({**_INTR, "fl_y": 1e-300, "frames": [_frame()]}, "'fl_y'"),
        ({**_INTR, "fl_x": -5, "frames": [_frame()]}, "'fl_x'"),
        ({**_INTR, "cx": 1e308, "frames": [_frame()]}, "'cx'"),
        ({**_INTR, "cy": -1e9, "frames": [_frame()]}, "'cy'"),
        ({**_INTR, "w": 1e308, "frames": [_frame()]}, "'w'"),
        ({**_INTR, "h": 2.5, "frames": [_frame()]}, "'h'"),
        ({"frames": [_frame(**{**_INTR, "fl_x": 1e308})]}, "'fl_x'"),  # per-frame intrinsics
        # not a rigid transform: scaled or sheared rotation, a huge rotation entry, a projective bottom row
        ({**_INTR, "frames": [_frame(transform_matrix=_with_entry(0, 1, 0.5))]}, "rotation"),
        ({**_INTR, "frames": [_frame(transform_matrix=_with_entry(1, 1, 1e200))]}, "rotation"),
        ({**_INTR, "frames": [_frame(transform_matrix=_with_entry(3, 0, 1.0))]}, "bottom row"),
    ],
)
def test_out_of_range_cameras_are_refused(tmp_path, meta, field):
    path = _write_json(tmp_path / "transforms.json", meta)
    with pytest.raises(InputError) as info:
        read_transforms(path)
    msg = str(info.value)
    assert str(path) in msg and "frame 0 (images/a.png)" in msg and field in msg and "\n" not in msg, msg


def test_plausible_extremes_are_accepted(tmp_path):
    # A long telephoto lens, an off-centre crop's principal point and a camera a few km from the origin are fine.
    frames = [_frame(transform_matrix=_with_entry(0, 3, 5000.0), fl_x=50000, fl_y=50000, cx=-30, cy=300)]
    read_transforms(_write_json(tmp_path / "t.json", {"w": 100, "h": 80, "frames": frames}))
