"""The COLMAP export: a model written from a synthetic scene (ground truth as the "prediction", so no weights)
read back with pycolmap, binary and text copies alike; `da3-splat predict --colmap` end to end (bundled tiny
model), read back by pycolmap and by nerfstudio's colmap dataparser; atomic replacement; the one-line error when
pycolmap is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from da3_splat import cli, colmap_export
from da3_splat.colmap_export import MODEL_DIR, TEXT_DIR, write_colmap_model
from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.errors import InputError
from da3_splat.export import confident_pixels

pycolmap = pytest.importorskip("pycolmap")

PCT, MAX_POINTS, SEED = 30.0, 4000, 3
NAMES = ["frame_a.png", "b.png", "c.png"]


@pytest.fixture(scope="module")
def scene():
    sc = render_scene(SyntheticConfig(frames=3, height=40, width=64), seed=7)
    conf = np.random.default_rng(0).uniform(1.0, 5.0, sc.depth.shape).astype(np.float32)
    return sc, conf


@pytest.fixture(scope="module")
def written(scene, tmp_path_factory):
    sc, conf = scene
    out = tmp_path_factory.mktemp("colmap")
    info = write_colmap_model(out, NAMES, sc.images, sc.depth, conf, sc.w2c, sc.K, PCT, MAX_POINTS, SEED)
    return out, info


def _project(K: np.ndarray, w2c: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def _unproject(K: np.ndarray, w2c: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
    """COLMAP's pixel convention, independently of da3_splat.geometry: pixel (x, y) is the point (x+.5, y+.5)."""
    pix = np.stack([x + 0.5, y + 0.5, np.ones_like(d, dtype=np.float64)], axis=-1)
    cam = (pix @ np.linalg.inv(K).T) * d[:, None]
    return (cam - w2c[:3, 3]) @ w2c[:3, :3]  # R^T (cam - t), row-wise


@pytest.mark.parametrize("folder", [MODEL_DIR, TEXT_DIR])
def test_model_reads_back_exactly(scene, written, folder):
    sc, conf = scene
    out, info = written
    S, H, W = sc.depth.shape
    suffix = ".bin" if folder == MODEL_DIR else ".txt"
    for f in ("cameras", "images", "points3D"):
        assert (out / folder / f"{f}{suffix}").is_file()
    rec = pycolmap.Reconstruction(str(out / folder))
    assert (rec.num_cameras(), rec.num_images()) == (S, S)

    for i in range(S):
        cam = rec.cameras[i + 1]
        assert cam.model_name == "PINHOLE" and (cam.width, cam.height) == (W, H)
        K = sc.K[i]
        np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], rtol=1e-12)
        np.testing.assert_allclose(cam.calibration_matrix(), K, rtol=1e-12, atol=1e-12)
        image = rec.images[i + 1]
        assert image.name == NAMES[i] and image.camera_id == i + 1
        pose = image.cam_from_world().matrix()
        np.testing.assert_allclose(pose[:, :3], sc.w2c[i, :3, :3], atol=1e-6)
        np.testing.assert_allclose(pose[:, 3], sc.w2c[i, :3, 3], atol=1e-6)

    idx = confident_pixels(sc.depth, conf, PCT, MAX_POINTS, SEED)
    assert info["num_points"] == rec.num_points3D() == idx.size == MAX_POINTS  # subsampled
    found = []
    for pid, point in rec.points3D.items():
        (el,) = point.track.elements  # observed once: by the pixel it came from
        image = rec.images[el.image_id]
        p2d = image.points2D[el.point2D_idx]
        assert p2d.point3D_id == pid
        view = el.image_id - 1
        x, y = (int(v) for v in np.floor(p2d.xy))
        np.testing.assert_array_equal(p2d.xy, [x + 0.5, y + 0.5])  # a pixel centre
        np.testing.assert_array_equal(point.color, sc.images[view, y, x])
        expected = _unproject(sc.K[view], sc.w2c[view], np.array([x]), np.array([y]), sc.depth[view, y, x][None])
        np.testing.assert_allclose(point.xyz, expected[0], rtol=1e-9, atol=1e-9)
        reproj = _project(sc.K[view], sc.w2c[view], point.xyz[None])[0]
        assert np.abs(reproj - p2d.xy).max() < 1e-3
        found.append((view * H + y) * W + x)
    np.testing.assert_array_equal(np.sort(found), idx)  # exactly the confident selection, each pixel once
    # every 2D point observes a 3D point (no stray keypoints)
    assert sum(rec.images[i + 1].num_points2D() for i in range(S)) == idx.size
    assert all(rec.images[i + 1].num_points3D == rec.images[i + 1].num_points2D() for i in range(S))


def test_points_land_on_the_other_views_surfaces(scene, written):
    """The pixel convention: a point from one view, projected into another, meets that view's depth map there
    (bilinear, pixel centres at +0.5). A half-pixel slip would be a first-order error on every slanted surface."""
    sc, _ = scene
    out, _ = written
    rec = pycolmap.Reconstruction(str(out / MODEL_DIR))
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    source = np.array([p.track.elements[0].image_id - 1 for p in rec.points3D.values()])
    S, H, W = sc.depth.shape
    rel = []
    for j in range(S):
        pts = xyz[source != j]
        uv = _project(sc.K[j], sc.w2c[j], pts)
        z = pts @ sc.w2c[j, 2, :3] + sc.w2c[j, 2, 3]
        inside = (z > 0) & (uv[:, 0] > 0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] > 0.5) & (uv[:, 1] < H - 0.5)
        grid = (uv[inside] - 0.5).astype(np.float32)[:, None, :]
        seen = cv2.remap(sc.depth[j], grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)[:, 0]
        rel.append(np.abs(seen / z[inside] - 1))
    rel = np.concatenate(rel)
    # measured here: median 1e-3 at this offset (0.5 px); 8e-3 with offset 0, 4e-3 with a quarter-pixel slip
    assert rel.size > 2000 and np.median(rel) < 2.5e-3, (rel.size, np.median(rel))


def test_rewrite_replaces_atomically(scene, tmp_path, monkeypatch):
    sc, conf = scene
    args = (NAMES, sc.images, sc.depth, conf, sc.w2c, sc.K)
    write_colmap_model(tmp_path, *args, max_points=100)
    write_colmap_model(tmp_path, *args, max_points=50)
    assert pycolmap.Reconstruction(str(tmp_path / MODEL_DIR)).num_points3D() == 50
    assert pycolmap.Reconstruction(str(tmp_path / TEXT_DIR)).num_points3D() == 50

    def interrupted(self, path):
        (Path(path) / "cameras.txt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pycolmap.Reconstruction, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_colmap_model(tmp_path, *args, max_points=10)
    # the previous model is untouched, both copies, and no temporary folder is left
    assert pycolmap.Reconstruction(str(tmp_path / MODEL_DIR)).num_points3D() == 50
    assert (tmp_path / TEXT_DIR / "cameras.txt").read_text() != "half"
    assert sorted(p.name for p in (tmp_path / "sparse").iterdir()) == ["0", "0_text"]


def test_a_name_with_a_space_keeps_the_binary_model_only(scene, written, tmp_path):
    """The text format splits on whitespace (COLMAP's reader too), the binary one stores names NUL-terminated."""
    sc, conf = scene
    shutil.copytree(written[0] / TEXT_DIR, tmp_path / TEXT_DIR)  # a previous run's text copy goes
    names = ["my photo.png", "b.png", "c.png"]
    info = write_colmap_model(tmp_path, names, sc.images, sc.depth, conf, sc.w2c, sc.K, max_points=20)
    assert info["text_path"] is None and not (tmp_path / TEXT_DIR).exists()
    rec = pycolmap.Reconstruction(str(tmp_path / MODEL_DIR))
    assert rec.images[1].name == "my photo.png" and rec.num_points3D() == 20


def test_bad_arguments(scene, tmp_path):
    sc, conf = scene
    ok = (NAMES, sc.images, sc.depth, conf, sc.w2c, sc.K)
    for i, bad, match in [
        (0, ["a.png", "a.png", "b.png"], "distinct"),
        (1, sc.images[..., 0], "images must be"),
        (1, sc.images.astype(np.float32), "uint8"),
        (3, conf[:2], "conf must be"),
        (4, sc.w2c[:, :2], "w2c must be"),
        (5, sc.K[:2], "K must be"),
    ]:
        args = list(ok)
        args[i] = bad
        with pytest.raises(ValueError, match=match):
            write_colmap_model(tmp_path, *args)
    assert not (tmp_path / "sparse").exists()


def test_missing_pycolmap_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # makes `import pycolmap` raise ImportError
    with pytest.raises(InputError, match=r"da3-splat\[colmap\]"):
        colmap_export.require_pycolmap()
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def no_heavy_work(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("da3_splat.inputs.load_model", no_heavy_work)
    (tmp_path / "a.png").write_bytes(b"")  # never read: the check comes first
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", str(tmp_path / "a.png"), "-o", str(out), "--model", "random:da3-small", "--colmap"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: --colmap needs pycolmap") and 'pip install "da3-splat[colmap]"' in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# `da3-splat predict --colmap`, end to end


def _run_predict(*args):
    cmd = [sys.executable, "-m", "da3_splat.cli", "predict", *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_colmap")
    sc = render_scene(SyntheticConfig(frames=3, height=72, width=128), seed=3)
    (root / "in").mkdir()
    for i, im in enumerate(sc.images):
        cv2.imwrite(str(root / "in" / f"v{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = root / "out"
    res = _run_predict(root / "in", "-o", out, "--model", "da3-tiny-synthetic", "--process-res", "112", "--colmap")
    return out, res


def test_predict_colmap_writes_a_model_of_its_images(predicted):
    out, res = predicted
    info = json.loads((out / "prediction.json").read_text())
    assert info["colmap"]["path"] == "sparse/0" and "sparse/0/" in res.stdout and "COLMAP" in res.stdout
    H, W = info["processed_size"]
    for folder in (MODEL_DIR, TEXT_DIR):
        rec = pycolmap.Reconstruction(str(out / folder))
        assert rec.num_points3D() == info["num_points"] == info["colmap"]["num_points"] > 0  # points.ply's count
        assert sorted(im.name for im in rec.images.values()) == sorted(p.name for p in (out / "images").iterdir())
        for image in rec.images.values():
            cam = rec.cameras[image.camera_id]
            assert cv2.imread(str(out / "images" / image.name)).shape == (cam.height, cam.width, 3) == (H, W, 3)
            with np.load(out / "depth" / f"{Path(image.name).stem}.npz") as z:
                np.testing.assert_allclose(cam.calibration_matrix(), z["intrinsics"], rtol=1e-6)
                np.testing.assert_allclose(image.cam_from_world().matrix(), z["extrinsics"], atol=1e-6)
    assert not list(out.rglob("*.tmp"))


def test_nerfstudio_colmap_dataparser_reads_the_export(predicted):
    import torch
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
    from nerfstudio.data.utils.colmap_parsing_utils import read_points3D_binary

    from da3_splat.data.transforms import read_transforms
    from da3_splat.geometry import opencv_w2c_to_opengl_c2w

    out, _ = predicted
    files, w2c, K, sizes = read_transforms(out / "transforms.json")
    # as the README's `ns-train splatfacto --data OUT colmap --colmap-path sparse/0` configures it
    default = ColmapDataParserConfig(data=out, colmap_path=Path("sparse/0")).setup()
    n = sum(len(default.get_dataparser_outputs(split).image_filenames) for split in ("train", "test"))
    assert n == len(files) == 3
    # without nerfstudio's re-orientation and scaling: our cameras (transforms.json) and our points exactly
    exact = ColmapDataParserConfig(
        data=out,
        colmap_path=Path("sparse/0"),
        images_path=Path("images"),
        downscale_factor=1,
        eval_mode="all",
        orientation_method="none",
        center_method="none",
        auto_scale_poses=False,
        assume_colmap_world_coordinate_convention=False,
    )
    outputs = exact.setup().get_dataparser_outputs("train")
    assert [p.name for p in outputs.image_filenames] == [Path(f).name for f in files]
    cams = outputs.cameras
    np.testing.assert_allclose(cams.fx[:, 0], K[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(cams.fy[:, 0], K[:, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(cams.cx[:, 0], K[:, 0, 2], rtol=1e-6)
    np.testing.assert_allclose(cams.cy[:, 0], K[:, 1, 2], rtol=1e-6)
    assert (cams.height[:, 0].numpy() == sizes[:, 0]).all() and (cams.width[:, 0].numpy() == sizes[:, 1]).all()
    c2w = opencv_w2c_to_opengl_c2w(torch.from_numpy(w2c).double())[:, :3].float()
    torch.testing.assert_close(cams.camera_to_worlds, c2w, atol=1e-5, rtol=0)
    rec = pycolmap.Reconstruction(str(out / MODEL_DIR))
    ids = list(read_points3D_binary(out / MODEL_DIR / "points3D.bin"))  # nerfstudio's order: the file's
    ours = np.array([rec.points3D[i].xyz for i in ids])
    assert len(ids) == rec.num_points3D()
    np.testing.assert_allclose(outputs.metadata["points3D_xyz"].numpy(), ours, rtol=1e-5, atol=1e-5)


def test_overwrite_without_colmap_removes_the_stale_model(predicted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(predicted[0], out)
    (out / "sparse" / "1").mkdir()  # the user's own model beside ours stays
    images = tmp_path / "in"
    images.mkdir()
    for name in ("v0.png", "v1.png"):
        shutil.copy(out / "images" / name, images / name)
    _run_predict(images, "-o", out, "--model", "da3-tiny-synthetic", "--process-res", "112", "--overwrite")
    assert not (out / MODEL_DIR).exists() and not (out / TEXT_DIR).exists() and (out / "sparse" / "1").is_dir()
    assert "colmap" not in json.loads((out / "prediction.json").read_text())
