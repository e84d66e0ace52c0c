"""DL3DV-style scenes: finding them, reading cameras and images, undistortion, skipping bad frames, crops."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from da3_splat.data.dl3dv import crop_geometry, find_scenes, load_views, read_scene
from da3_splat.data.sampling import read_eval_index
from da3_splat.data.synthetic import SyntheticConfig, make_synthetic
from da3_splat.data.transforms import read_transforms, write_transforms
from da3_splat.errors import InputError

MYDESK = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mydesk"
needs_mydesk = pytest.mark.skipif(not (MYDESK / "transforms.json").is_file(), reason=f"no real scene at {MYDESK}")


def write_scene(root: Path, n: int = 5, h: int = 60, w: int = 100, downscale: int = 4, images=None) -> Path:
    """A small scene: cameras along x looking down +z, intrinsics stated at ``downscale`` x the image size,
    images in images_<downscale>/ (``images``: (n, h, w, 3) uint8, default: a coordinate ramp R = column,
    G = 2 * row)."""
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, 0, 3] = -np.arange(n, dtype=np.float64)  # centre at x = i
    K = np.array([[90.0, 0, 50.5], [0, 91.0, 29.5], [0, 0, 1]]) * [[downscale], [downscale], [1]]
    names = [f"frame_{i + 1:05d}.png" for i in range(n)]
    write_transforms(
        root / "transforms.json",
        [f"images/{m}" for m in names],
        w2c,
        np.repeat(K[None], n, 0),
        [(h * downscale, w * downscale)] * n,
    )
    if images is None:
        rows, cols = np.mgrid[0:h, 0:w]
        images = np.repeat(np.stack([cols, 2 * rows, np.full_like(cols, 7)], -1)[None], n, 0).astype(np.uint8)
    folder = root / ("images" if downscale == 1 else f"images_{downscale}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        cv2.imwrite(str(folder / name), np.ascontiguousarray(image[..., ::-1]))
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, 1, SyntheticConfig(frames=12, height=28, width=56), seed=2, workers=1)[0]


def test_synthetic_scene(synthetic):
    scene = read_scene(synthetic)
    assert scene.name == "scene_0000" and len(scene) == 12 and scene.downscale == 4
    assert (scene.height, scene.width) == (28, 56) and scene.frame_ids == list(range(12))
    assert [p.name for p in scene.image_paths][:2] == ["frame_00001.png", "frame_00002.png"]
    assert all(p.parent.name == "images_4" for p in scene.image_paths)
    assert [p.parent.name for p in scene.depth_paths] == ["depths_4"] * 12
    _, w2c, K, _ = read_transforms(synthetic)
    np.testing.assert_allclose(scene.intrinsics, K / [[4], [4], [1]])  # stated at 4x the image size
    np.testing.assert_allclose(scene.w2c, w2c)
    assert scene.eval_index["targets"] == [0, 8]
    assert read_eval_index(scene)["scene_0000"].targets == [0, 8]
    views = load_views(scene, [0, 5])
    assert views["images"].shape == (2, 3, 28, 56) and 0 <= views["images"].min() and views["images"].max() <= 1
    image = cv2.imread(str(scene.image_paths[5]))[..., ::-1].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(views["images"][1].numpy(), image, atol=1e-6)
    np.testing.assert_array_equal(views["depth"][1].numpy(), np.load(scene.depth_paths[5]))
    assert views["w2c"].dtype == views["intrinsics"].dtype == views["depth"].dtype == views["images"].dtype


def test_image_folder_choice(tmp_path):
    write_scene(tmp_path, downscale=4)
    assert read_scene(tmp_path).downscale == 4
    with pytest.raises(InputError, match="images_2"):
        read_scene(tmp_path, downscale=2)
    write_scene(tmp_path / "b", downscale=1)
    scene = read_scene(tmp_path / "b")
    assert scene.downscale == 1 and scene.image_paths[0] == tmp_path / "b" / "images" / "frame_00001.png"
    assert scene.depth_paths is None and scene.eval_index is None


@needs_mydesk
def test_mydesk():
    scene = read_scene(MYDESK, downscale=4)
    assert scene.name == "mydesk" and len(scene) == 498 and (scene.height, scene.width) == (270, 480)
    meta = json.loads((MYDESK / "transforms.json").read_text())
    fr = meta["frames"][7]
    assert (fr["w"], fr["h"]) == (1920, 1080)
    np.testing.assert_allclose(
        scene.intrinsics[7], [[fr["fl_x"] / 4, 0, fr["cx"] / 4], [0, fr["fl_y"] / 4, fr["cy"] / 4], [0, 0, 1]]
    )
    assert scene.image_paths[7].name == "frame_00008.jpg" and scene.distortion is None
    views = read_eval_index(scene)["mydesk"]
    assert views.targets == list(range(0, 498, 8))
    context = views.context_views()
    assert len(context) == 32 and not set(context) & set(views.targets)
    assert load_views(scene, [0], (126, 224))["images"].shape == (1, 3, 126, 224)


def test_crop_intrinsics_follow_the_pixels(tmp_path):
    scene = read_scene(write_scene(tmp_path, h=60, w=100))
    size = (28, 42)
    rh, rw, top, left = crop_geometry(60, 100, size)
    assert (rh, rw, top, left) == (28, 47, 0, 2)  # covers 28 x 42 with the aspect kept, then centre crop
    full, crop = load_views(scene, [1]), load_views(scene, [1], size)
    K0, K1 = full["intrinsics"][0].double().numpy(), crop["intrinsics"][0].double().numpy()
    # a 3D point projects to the same image content: shifted and scaled like the pixels
    X = np.array([0.3, -0.2, 2.0])
    u0, u1 = (K0 @ X)[:2] / X[2], (K1 @ X)[:2] / X[2]
    np.testing.assert_allclose(u1, [u0[0] * rw / 100 - left, u0[1] * rh / 60 - top], atol=1e-4)
    # every crop pixel centre, taken back through K0 K1^-1, lands where the ramp has the value it shows
    v, u = np.mgrid[0:28, 0:42] + 0.5
    back = np.einsum("ij,hwj->hwi", K0 @ np.linalg.inv(K1), np.stack([u, v, np.ones_like(u)], -1))
    shown = crop["images"][0].numpy() * 255
    inner = (slice(2, -2), slice(2, -2))  # away from the borders, where the ramp is clamped
    np.testing.assert_allclose(shown[0][inner], (back[..., 0] - 0.5)[inner], atol=0.6)
    np.testing.assert_allclose(shown[1][inner], 2 * (back[..., 1] - 0.5)[inner], atol=1.2)


def _distorted_dot_scene(root: Path, K_img: np.ndarray, dist: np.ndarray, point: np.ndarray) -> tuple[int, int]:
    """A scene whose images are black with a white dot where the distorted camera sees ``point``."""
    h, w = 120, 160
    shift = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # OpenCV pixel centres at integers
    px, _ = cv2.projectPoints(point[None], np.zeros(3), np.zeros(3), shift @ K_img, dist)
    x, y = px[0, 0]
    image = np.zeros((h, w, 3), np.uint8)
    rows, cols = np.mgrid[0:h, 0:w]
    image[(cols - x) ** 2 + (rows - y) ** 2 <= 2.5**2] = 255
    write_scene(root, n=3, h=h, w=w, images=[image] * 3)
    meta = json.loads((root / "transforms.json").read_text())
    for fr in meta["frames"]:  # intrinsics at 4x, as DL3DV
        fr.update(fl_x=K_img[0, 0] * 4, fl_y=K_img[1, 1] * 4, cx=K_img[0, 2] * 4, cy=K_img[1, 2] * 4)
    for key in ("fl_x", "fl_y", "cx", "cy"):
        meta.pop(key, None)
    meta.update(camera_model="OPENCV", k1=dist[0], k2=dist[1], p1=dist[2], p2=dist[3])
    (root / "transforms.json").write_text(json.dumps(meta))
    return h, w


def test_distortion_is_undone_or_refused(tmp_path):
    K_img = np.array([[100.0, 0, 80.0], [0, 100.0, 60.0], [0, 0, 1]])
    dist = np.array([-0.25, 0.05, 0.001, -0.002, 0.0])
    point = np.array([0.5, 0.35, 1.0])  # far off-centre, where distortion moves it several pixels
    _distorted_dot_scene(tmp_path, K_img, dist, point)
    with pytest.raises(InputError, match="distortion.*k1=-0.25"):
        read_scene(tmp_path, undistort=False)
    scene = read_scene(tmp_path)
    np.testing.assert_allclose(scene.raw_intrinsics[0], K_img)
    np.testing.assert_allclose(scene.distortion[0], dist)
    assert not np.allclose(scene.intrinsics[0], K_img)
    image = load_views(scene, [0])["images"][0, 0].numpy()
    ys, xs = np.nonzero(image > 0.5)
    weights = image[ys, xs]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum() + 0.5
    expected = (scene.intrinsics[0] @ point)[:2] / point[2]  # the undistorted image is pinhole
    distorted = (K_img @ point)[:2] / point[2]
    assert np.abs(found - expected).max() < 0.5 < np.abs(distorted - expected).max()


def test_bad_frames_are_skipped_with_one_warning(tmp_path):
    write_scene(tmp_path, n=6)
    (tmp_path / "images_4" / "frame_00002.png").unlink()
    (tmp_path / "images_4" / "frame_00004.png").write_bytes(b"not an image")
    cv2.imwrite(str(tmp_path / "images_4" / "frame_00005.png"), np.zeros((30, 50, 3), np.uint8))
    with pytest.warns(
        UserWarning,
        match=r"skipped 3 of 6 frames: frame_00002.png \(missing\), "
        r"frame_00004.png \(unreadable.*frame_00005.png \(50x30, not 100x60",
    ) as record:
        scene = read_scene(tmp_path)
    assert len(record) == 1
    assert scene.frame_ids == [0, 2, 5] and len(scene) == 3
    assert scene.positions([5, 0]) == [2, 0]
    with pytest.raises(InputError, match="not read"):
        scene.positions([1])
    with pytest.warns(UserWarning), pytest.raises(InputError, match="only 3 of 6 frames.*at least 4"):
        read_scene(tmp_path, min_frames=4)


def test_escaping_file_path_is_refused(tmp_path):
    write_scene(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "transforms.json").read_text())
    meta["frames"][1]["file_path"] = "../outside/frame.png"
    (tmp_path / "s" / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="outside"):
        read_scene(tmp_path / "s")


def test_find_scenes_in_both_layouts(tmp_path):
    bench = tmp_path / "bench"
    for h in ("bbb", "aaa"):
        write_scene(bench / h / "nerfstudio")
    (bench / "notes").mkdir()
    assert find_scenes(bench) == [bench / "aaa", bench / "bbb"]
    scene = read_scene(bench / "aaa")
    assert scene.name == "aaa" and scene.root == bench / "aaa" / "nerfstudio" and len(scene) == 5
    assert read_scene(bench / "aaa" / "nerfstudio").name == "aaa"

    tenk = tmp_path / "10k"
    write_scene(tenk / "1K" / "h2")
    write_scene(tenk / "1K" / "h1")
    write_scene(tenk / "2K" / "h3")
    write_scene(tenk / "top")
    write_scene(tenk / ".top.partial")  # unfinished: hidden
    assert find_scenes(tenk) == [tenk / "1K" / "h1", tenk / "1K" / "h2", tenk / "2K" / "h3", tenk / "top"]
    assert find_scenes(tenk / "top") == [tenk / "top"]
    assert find_scenes(tmp_path / "10k" / "1K" / "h1" / "images_4") == []
    with pytest.raises(InputError, match="not found"):
        find_scenes(tmp_path / "nope")
    with pytest.raises(InputError, match="no transforms.json"):
        read_scene(tenk / "1K")


def test_load_views_checks_indices(tmp_path):
    scene = read_scene(write_scene(tmp_path, n=3))
    with pytest.raises(InputError, match="out of range"):
        load_views(scene, [0, 3])
