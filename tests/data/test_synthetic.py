"""Synthetic DL3DV-style scenes: layout, cameras, exact depth, multi-view consistent colours, determinism."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from da3_splat.data.synthetic import SyntheticConfig, make_synthetic, render_scene, write_dl3dv_scene

CFG = SyntheticConfig(frames=10, height=64, width=112)
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    paths = make_synthetic(out, 2, CFG, seed=3, workers=2)
    return out, paths


def _load(scene):
    """Images, depths, K and w2c of a written scene, read back from its files alone (K at images_4 size)."""
    meta = json.loads((scene / "transforms.json").read_text())
    images, depths, Ks, w2cs = [], [], [], []
    for fr in meta["frames"]:
        path = scene / fr["file_path"].replace("images/", "images_4/")
        images.append(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64))
        depths.append(np.load(scene / fr["depth_file_path"].replace("depths/", "depths_4/")).astype(np.float64))
        Ks.append(np.array([[fr["fl_x"], 0, fr["cx"]], [0, fr["fl_y"], fr["cy"]], [0, 0, 4]]) / 4)
        w2cs.append(np.linalg.inv(np.array(fr["transform_matrix"]) @ FLIP))
    return images, depths, Ks, w2cs


def _bilinear(img, x, y):
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    if img.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _to_frame(depths, Ks, w2cs, i, j):
    """Frame i's pixels (centres at +0.5) unprojected with its depth and projected into frame j: their depth
    there and their array coordinates (x, y) in frame j."""
    H, W = depths[i].shape
    v, u = np.mgrid[0:H, 0:W] + 0.5
    cam_i = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(Ks[i]).T * depths[i][..., None]
    c2w_i = np.linalg.inv(w2cs[i])
    cam_j = (cam_i @ c2w_i[:3, :3].T + c2w_i[:3, 3]) @ w2cs[j][:3, :3].T + w2cs[j][:3, 3]
    z = cam_j[..., 2]
    return z, cam_j[..., 0] / z * Ks[j][0, 0] + Ks[j][0, 2] - 0.5, cam_j[..., 1] / z * Ks[j][1, 1] + Ks[j][1, 2] - 0.5


def _depth_agreement(depths, Ks, w2cs, pairs):
    """For frame pairs (i, j): frame j's depth, sampled bilinearly in *inverse* depth where frame i's pixels
    land, against their depth. Inverse depth is affine in pixel coordinates on a plane, so wherever the 2x2
    pixels sampled lie on one plane the two agree to float precision.

    Returns the relative errors, whether each point is visible in frame j (not behind what frame j sees)
    and whether its 2x2 neighbourhood in frame j is planar (no depth edge or room corner through it)."""
    H, W = depths[0].shape
    rel, visible, planar = [], [], []
    for i, j in pairs:
        z, x, y = _to_frame(depths, Ks, w2cs, i, j)
        inside = (z > 0) & (x >= 0) & (y >= 0) & (x < W - 1) & (y < H - 1)
        z, x, y = z[inside], x[inside], y[inside]
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        inv = 1.0 / np.stack(
            [depths[j][y0, x0], depths[j][y0, x0 + 1], depths[j][y0 + 1, x0], depths[j][y0 + 1, x0 + 1]]
        )
        fx, fy = x - x0, y - y0
        z_j = 1.0 / ((inv[0] * (1 - fx) + inv[1] * fx) * (1 - fy) + (inv[2] * (1 - fx) + inv[3] * fx) * fy)
        rel.append(np.abs(z_j - z) / z)
        visible.append(z <= z_j * (1 + 1e-3))
        planar.append(np.abs(inv[0] - inv[1] - inv[2] + inv[3]) <= 1e-4 * inv.mean(0))
    return np.concatenate(rel), np.concatenate(visible), np.concatenate(planar)


def _coincident_colour_differences(images, depths, Ks, w2cs, tol=0.05):
    """Signed colour differences (N, 3) over all frame pairs (i, j) between pixels of frame i and the pixel of
    frame j that sees the same surface point, taking the pixels whose reprojection falls within ``tol`` of a
    pixel centre: no resampling, so only the renderer's own view dependence is left."""
    H, W = depths[0].shape
    out = []
    for i in range(len(images)):
        for j in range(len(images)):
            if i == j:
                continue
            z, x, y = _to_frame(depths, Ks, w2cs, i, j)
            rx, ry = np.round(x), np.round(y)
            hit = (z > 0) & (np.abs(x - rx) < tol) & (np.abs(y - ry) < tol)
            hit &= (rx >= 0) & (ry >= 0) & (rx < W) & (ry < H)
            rx, ry = rx[hit].astype(int), ry[hit].astype(int)
            seen = np.abs(depths[j][ry, rx] - z[hit]) < 1e-3 * z[hit]  # the same point, not an occluder
            out.append(images[j][ry, rx][seen] - images[i][hit][seen])
    return np.concatenate(out)


def test_layout_and_files(scenes):
    out, paths = scenes
    assert [p.name for p in paths] == ["scene_0000", "scene_0001"]
    assert sorted(p.name for p in out.iterdir()) == ["scene_0000", "scene_0001"]  # no partial folders left
    names = [f"frame_{i:05d}" for i in range(1, 11)]
    for scene in paths:
        assert sorted(p.name for p in scene.iterdir()) == [
            "depths_4",
            "eval_index.json",
            "images_4",
            "scene.json",
            "transforms.json",
        ]
        assert sorted(p.name for p in (scene / "images_4").iterdir()) == [f"{n}.png" for n in names]
        assert sorted(p.name for p in (scene / "depths_4").iterdir()) == [f"{n}.npy" for n in names]
        meta = json.loads((scene / "transforms.json").read_text())
        assert meta["camera_model"] == "PINHOLE"
        assert [f["file_path"] for f in meta["frames"]] == [f"images/{n}.png" for n in names]
        assert [f["depth_file_path"] for f in meta["frames"]] == [f"depths/{n}.npy" for n in names]
        info = json.loads((scene / "scene.json").read_text())
        assert info["base_seed"] == 3 and info["config"]["frames"] == 10 and info["trajectory"]
        for fr in meta["frames"]:
            # intrinsics are stated at 4x the size of images_4, like DL3DV
            assert (fr["w"], fr["h"]) == (4 * 112, 4 * 64)
            assert fr["cx"] == pytest.approx(4 * 112 / 2) and fr["cy"] == pytest.approx(4 * 64 / 2)
            hfov = np.degrees(2 * np.arctan(fr["w"] / 2 / fr["fl_x"]))
            assert CFG.hfov_deg[0] - 1e-6 <= hfov <= CFG.hfov_deg[1] + 1e-6 and fr["fl_y"] == fr["fl_x"]
            c2w = np.array(fr["transform_matrix"])
            assert c2w.shape == (4, 4) and np.allclose(c2w[3], [0, 0, 0, 1])
            R = c2w[:3, :3]
            assert np.allclose(R.T @ R, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
        image = cv2.imread(str(scene / "images_4" / "frame_00001.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 112, 3) and image.dtype == np.uint8
        depth = np.load(scene / "depths_4" / "frame_00001.npy")
        assert depth.shape == (64, 112) and depth.dtype == np.float32


def test_eval_index(scenes):
    for scene in scenes[1]:
        index = json.loads((scene / "eval_index.json").read_text())
        assert index["scene"] == scene.name and index["targets"] == [0, 8]
        # 8 non-target frames: room for 2, 4 and 8 context views, not 12
        assert [k for k in index if k.startswith("context_")] == ["context_2", "context_4", "context_8"]
        for k in (2, 4, 8):
            ctx = index[f"context_{k}"]
            assert len(ctx) == k and ctx == sorted(set(ctx)) and not set(ctx) & set(index["targets"])
            assert all(0 <= c < 10 for c in ctx)


def test_images_and_depths_are_sane(scenes):
    for scene in scenes[1]:
        images, depths, _, _ = _load(scene)
        for image, depth in zip(images, depths):
            assert image.mean(2).std() > 8.0  # textured, not flat
            assert np.isfinite(depth).all() and depth.min() > 0.1 and depth.max() < 20


def test_depth_is_exact(scenes):
    """From the files alone (intrinsics from transforms.json / 4, OpenGL poses converted back), between
    neighbouring frames both ways."""
    pairs = [(i, i + 1) for i in range(9)] + [(i + 1, i) for i in range(9)]
    for scene in scenes[1]:
        _, depths, Ks, w2cs = _load(scene)
        rel, visible, planar = _depth_agreement(depths, Ks, w2cs, pairs)
        assert len(rel) > 5 * 64 * 112
        assert np.median(rel[visible]) < 1e-5
        assert (rel[visible & planar] < 1e-3).mean() > 0.98
        assert (rel < 1e-3).sum() / visible.sum() > 0.85  # the rest: depth edges and corners in frame j


def test_colours_agree_across_views(scenes):
    """The written scenes: the same surface point has about the same colour in every frame; the texture
    pre-filter follows the pixel footprint (as a camera's pixels integrate more of a far surface)."""
    for scene in scenes[1]:
        diff = _coincident_colour_differences(*_load(scene))
        assert len(diff) > 500
        err = np.abs(diff).mean(1)
        assert np.median(err) < 4.0 and np.percentile(err, 90) < 22 and np.abs(diff.mean(0)).max() < 2.0


def test_shading_is_view_independent():
    """Without the footprint-dependent texture filter and silhouette anti-aliasing, a surface point's colour
    is a function of the point alone (Lambertian shading, fixed lights, world-space shadows and textures)."""
    scene = render_scene(replace(CFG, texture_filter=0.0, antialias=False), seed=3)
    diff = _coincident_colour_differences(
        list(scene.images.astype(np.float64)), list(scene.depth.astype(np.float64)), list(scene.K), list(scene.w2c)
    )
    assert len(diff) > 500
    err = np.abs(diff).mean(1)
    # 8-bit rounding, and unfiltered texture or shadow edges within the 0.05-pixel tolerance, are all that differ
    assert np.median(err) < 1.2 and np.percentile(err, 90) < 4.5 and np.abs(diff.mean(0)).max() < 0.4


def test_render_scene_arrays_match_the_files(tmp_path):
    scene = render_scene(CFG, seed=5)
    assert scene.images.shape == (10, 64, 112, 3) and scene.images.dtype == np.uint8
    assert scene.depth.shape == (10, 64, 112) and scene.depth.dtype == np.float32
    assert scene.w2c.shape == (10, 4, 4) and scene.K.shape == (10, 3, 3)
    write_dl3dv_scene(scene, tmp_path / "s")
    images, depths, Ks, w2cs = _load(tmp_path / "s")
    np.testing.assert_array_equal(np.stack(images), scene.images)
    np.testing.assert_array_equal(np.stack(depths), scene.depth)
    np.testing.assert_allclose(np.stack(Ks), scene.K, rtol=1e-12)
    np.testing.assert_allclose(np.stack(w2cs), scene.w2c, atol=1e-9)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed_whatever_the_worker_count(scenes, tmp_path):
    out, _ = scenes
    again = make_synthetic(tmp_path / "again", 2, CFG, seed=3, workers=1)
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "again")
    other = make_synthetic(tmp_path / "other", 1, CFG, seed=4, workers=1)
    a, b = _tree_bytes(again[0]), _tree_bytes(other[0])
    assert a.keys() == b.keys()
    assert a["images_4/frame_00001.png"] != b["images_4/frame_00001.png"]
    assert a["depths_4/frame_00001.npy"] != b["depths_4/frame_00001.npy"]


def test_refuses_to_overwrite_unless_asked(tmp_path):
    cfg = SyntheticConfig(frames=2, height=16, width=24)
    make_synthetic(tmp_path, 1, cfg, seed=0, workers=1)
    stamp = (tmp_path / "scene_0000" / "images_4" / "frame_00001.png").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic(tmp_path, 1, cfg, seed=1, workers=1)
    (tmp_path / "scene_0000" / "stale.txt").write_text("x")
    make_synthetic(tmp_path, 1, cfg, seed=1, workers=1, overwrite=True)
    assert not (tmp_path / "scene_0000" / "stale.txt").exists()  # the folder was replaced, not merged
    assert (tmp_path / "scene_0000" / "images_4" / "frame_00001.png").read_bytes() != stamp
    (tmp_path / "fresh" / "scene_0000").mkdir(parents=True)  # an empty scene folder is fine
    make_synthetic(tmp_path / "fresh", 1, cfg, seed=1, workers=1)
    assert (tmp_path / "fresh" / "scene_0000" / "transforms.json").is_file()


def test_config_is_validated():
    with pytest.raises(ValueError, match="trajectories"):
        SyntheticConfig(trajectories=("spiral",))
    with pytest.raises(ValueError, match="boxes"):
        SyntheticConfig(boxes=(3, 1))


def test_pan_rotates_in_place_and_is_opt_in():
    """A pan turns the camera by 30-90 degrees of yaw while its centre sways by centimetres; the default mix
    never draws one (the bundled data's seeds keep their scenes)."""
    assert "pan" not in SyntheticConfig().trajectories
    for seed in range(4):
        sc = render_scene(SyntheticConfig(frames=6, height=16, width=24, trajectories=("pan",)), seed=seed)
        assert sc.info["trajectory"] == "pan"
        c2w = np.linalg.inv(sc.w2c)
        centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]
        assert np.linalg.norm(centres - centres[0], axis=1).max() < 0.25
        yaw = np.degrees(np.arctan2(forward[:, 2], forward[:, 0]))
        turn = abs((yaw[-1] - yaw[0] + 180) % 360 - 180)
        assert 30 - 1e-6 <= turn <= 90 + 1e-6  # the first and the last frame are the ends of the sweep


def test_loop_orbit_closes_and_is_opt_in():
    """A loop turns 1.1 times around its centre: the last tenth of the frames retraces the first (the same place
    and view direction, for loop closure); the default mix never draws one."""
    assert "loop" not in SyntheticConfig().trajectories
    sc = render_scene(SyntheticConfig(frames=111, height=16, width=24, trajectories=("loop",)), seed=1)
    assert sc.info["trajectory"] == "loop"
    c2w = np.linalg.inv(sc.w2c)
    centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]
    step = np.linalg.norm(np.diff(centres, axis=0), axis=1).mean()
    # frame 100 is one full turn after frame 0: the same place (within a step) and the same view direction
    assert np.linalg.norm(centres[100] - centres[0]) < step and forward[100] @ forward[0] > 0.999
    assert np.linalg.norm(centres[50] - centres[0]) > 10 * step  # half a turn away it is elsewhere
