"""The cameras ``da3-images`` writes agree with the truth, end to end, in one pass and in several anchored passes.

A model whose cameras are exact (a stand-in that answers each pass with the ground-truth cameras, re-expressed in a
random similarity frame per pass, as DA3 answers in a frame of its own each time) goes through the real
dataparser: image loading, the anchored multi-pass merge, the intrinsics rescaling, nerfstudio's normalisation and
the transforms.json the run records. What comes out must equal the ground truth up to one similarity, so a
convention slip anywhere on that path (w2c vs c2w, OpenCV vs OpenGL axes, an anchor fitted the wrong way round,
intrinsics in the wrong pixels) fails here, whatever the quality of the bundled model's cameras.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.geometry import (
    apply_sim3_to_w2c,
    camera_centers,
    opengl_c2w_to_opencv_w2c,
    umeyama,
)
from da3_splat.geometry_metrics import relative_pose_errors
from da3_splat.model.inference import Prediction

pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")

FRAMES = 20


def _random_rotation(rng) -> torch.Tensor:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.from_numpy(q)


class ExactCameras:
    """A stand-in for DA3 with the interface the dataparser uses: the true cameras of the images it is given
    (found by their bytes), in a fresh random similarity frame per call; the processed size is the image size."""

    has_cameras = True

    def __init__(self, images, w2c: np.ndarray, K: np.ndarray, seed: int = 0, depth: np.ndarray | None = None):
        self.truth = {hashlib.sha1(im.tobytes()).hexdigest(): i for i, im in enumerate(images)}
        self.w2c, self.K = torch.from_numpy(w2c).double(), K
        self.depth = depth  # the true depth (scaled with each pass's frame), or ones
        self.rng = np.random.default_rng(seed)
        self.passes: list[int] = []

    def infer(self, images, process_res=None, **_):
        ids = [self.truth[hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()] for im in images]
        self.passes.append(len(ids))
        R, t = _random_rotation(self.rng), torch.from_numpy(self.rng.normal(size=3))
        s = torch.tensor(float(self.rng.uniform(0.3, 3.0)), dtype=torch.float64)
        w2c = apply_sim3_to_w2c(self.w2c[ids], R, t, s)
        H, W = images[0].shape[:2]
        depth = np.ones((len(ids), H, W)) if self.depth is None else self.depth[ids] * float(s)
        return Prediction(
            depth=depth.astype(np.float32),
            depth_conf=np.ones((len(ids), H, W), np.float32),
            processed_images=np.stack(images),
            extrinsics=w2c[:, :3].float().numpy(),
            intrinsics=self.K[ids].astype(np.float32),
        )


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from PIL import Image

    sc = render_scene(SyntheticConfig(frames=FRAMES, height=48, width=80, trajectories=("orbit",)), seed=5)
    folder = tmp_path_factory.mktemp("da3_images") / "photos"
    folder.mkdir()
    for i, im in enumerate(sc.images):
        Image.fromarray(im).save(folder / f"img_{i:03d}.png")
    return folder, sc


def _errors(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor) -> tuple[float, float, float]:
    """Max pairwise rotation and translation-direction errors (deg), and the max centre error after a
    similarity fit, relative to the trajectory's extent."""
    rot, trans = relative_pose_errors(pred_w2c.float(), gt_w2c.float())
    c_pred, c_gt = camera_centers(pred_w2c), camera_centers(gt_w2c)
    R, t, s = umeyama(c_pred, c_gt)
    fitted = s * c_pred @ R.T + t
    extent = (c_gt.max(0).values - c_gt.min(0).values).norm()
    return float(rot.max()), float(trans.max()), float((fitted - c_gt).norm(dim=-1).max() / extent)


# one pass; several passes sharing 4 anchor views; streamed in chunks of 8 neighbouring frames
@pytest.mark.parametrize(("max_views", "chunk_size"), [(64, None), (8, None), (64, 8)])
def test_written_cameras_match_the_truth(scene, tmp_path, monkeypatch, max_views, chunk_size):
    import nerfstudio_plugin.dataparser as dp

    folder, sc = scene
    from da3_splat.model.preprocess import load_image

    images = [load_image(p) for p in sorted(folder.glob("*.png"))]
    # streaming fits each chunk on its overlap's depth too: the true depth, scaled with each pass's frame
    stand_in = ExactCameras(images, sc.w2c, sc.K, seed=max_views, depth=None if chunk_size is None else sc.depth)
    monkeypatch.setattr(dp, "load_da3", lambda weights, device: stand_in)
    config = dp.DA3ImagesDataParserConfig(
        data=folder, max_views_per_pass=max_views, chunk_size=chunk_size, eval_mode="all", device="cpu"
    )
    parser = config.setup()
    outputs = parser.get_dataparser_outputs("train")
    if chunk_size is None:
        assert len(stand_in.passes) == (1 if max_views >= FRAMES else 4) and max(stand_in.passes) <= max_views
    else:
        assert len(stand_in.passes) > 2 and max(stand_in.passes) <= chunk_size

    gt = torch.from_numpy(sc.w2c).double()
    # what the run records: transforms.json (OpenGL camera-to-world, intrinsics in pixels of each image)
    file = parser.save_cameras(tmp_path / "run")
    frames = json.loads(Path(file).read_text())["frames"]
    order = [int(Path(f["file_path"]).stem.split("_")[1]) for f in frames]
    c2w = torch.tensor([f["transform_matrix"] for f in frames], dtype=torch.float64)
    written = torch.empty_like(gt)
    written[order] = opengl_c2w_to_opencv_w2c(c2w)
    rot, trans, centre = _errors(written, gt)
    assert rot < 1e-3 and trans < 1e-2 and centre < 1e-4, (rot, trans, centre)
    for f, i in zip(frames, order):
        assert (f["h"], f["w"]) == sc.images[i].shape[:2]
        np.testing.assert_allclose([f["fl_x"], f["fl_y"], f["cx"], f["cy"]], sc.K[i][[0, 1, 0, 1], [0, 1, 2, 2]], 1e-5)

    # what nerfstudio trains on: the same cameras after its orientation, centring and scaling
    cams = outputs.cameras
    ns_w2c = opengl_c2w_to_opencv_w2c(torch.cat([cams.camera_to_worlds.double(), _bottom(len(cams))], 1))
    names = [int(Path(p).stem.split("_")[1]) for p in outputs.image_filenames]
    rot, trans, centre = _errors(ns_w2c, gt[names])
    assert rot < 1e-3 and trans < 1e-2 and centre < 1e-4, (rot, trans, centre)


def test_pose_solver_option_reaches_the_model(scene, monkeypatch):
    import nerfstudio_plugin.dataparser as dp
    from da3_splat.model import get_config
    from da3_splat.model.preprocess import load_image

    folder, sc = scene
    stand_in = ExactCameras([load_image(p) for p in sorted(folder.glob("*.png"))], sc.w2c, sc.K)
    stand_in.config = get_config("da3-small")
    monkeypatch.setattr(dp, "load_da3", lambda weights, device: stand_in)
    config = dp.DA3ImagesDataParserConfig(data=folder, eval_mode="all", device="cpu", pose_solver="matches")
    config.setup().get_dataparser_outputs("train")
    assert stand_in.config.pose_solver == "matches" and get_config("da3-small").pose_solver == "decoder"


def test_streaming_options_reach_the_library_and_are_checked(scene, monkeypatch, capsys):
    import da3_splat.streaming as streaming
    import nerfstudio_plugin.dataparser as dp
    from da3_splat.model.preprocess import load_image

    folder, sc = scene
    images = [load_image(p) for p in sorted(folder.glob("*.png"))]
    stand_in = ExactCameras(images, sc.w2c, sc.K, depth=sc.depth)
    monkeypatch.setattr(dp, "load_da3", lambda weights, device: stand_in)
    seen = {}
    real = streaming.infer_streaming

    def spy(model, frames, chunk_size, **kw):
        seen.update(chunk_size=chunk_size, **kw)
        return real(model, frames, chunk_size, **kw)

    monkeypatch.setattr(streaming, "infer_streaming", spy)
    config = dp.DA3ImagesDataParserConfig(data=folder, chunk_size=10, loop_closure=True, eval_mode="all", device="cpu")
    config.setup().get_dataparser_outputs("train")
    assert seen["chunk_size"] == 10 and seen["loop_closure"] is True
    with pytest.raises(SystemExit) as exit_info:
        dp.DA3ImagesDataParserConfig(data=folder, loop_closure=True, device="cpu").setup().get_dataparser_outputs()
    assert exit_info.value.code == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: --loop-closure needs --chunk-size (it corrects the chunks of a streamed run)"
    )


def test_a_bad_chunk_size_is_one_line_before_the_model_loads(scene, monkeypatch, capsys):
    import nerfstudio_plugin.dataparser as dp

    folder, _ = scene
    monkeypatch.setattr(dp, "load_da3", lambda weights, device: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        dp.DA3ImagesDataParserConfig(data=folder, chunk_size=2, device="cpu").setup().get_dataparser_outputs()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --chunk-size must be at least") and "\n" not in err, err


def _bottom(n: int) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 1, 4)


def test_a_convention_slip_is_caught(scene):
    """The checks above are not blind: cameras handed over as camera-to-world fail them."""
    _, sc = scene
    gt = torch.from_numpy(sc.w2c).double()
    slipped = torch.linalg.inv(gt)
    rot, trans, centre = _errors(slipped, gt)
    assert rot > 1 or trans > 1 or centre > 1e-2


@pytest.mark.parametrize("chunk_size", [None, 8])  # anchored passes; streamed chunks
def test_colmap_model_of_a_multi_pass_run(scene, tmp_path, monkeypatch, chunk_size):
    """--colmap: the COLMAP model has the written cameras, and its points (from each pass's depth, rescaled into the
    merged frame) sit on the true surfaces once that frame is fitted to the truth; later passes included."""
    pycolmap = pytest.importorskip("pycolmap")
    import nerfstudio_plugin.dataparser as dp

    folder, sc = scene
    from da3_splat.model.preprocess import load_image

    images = [load_image(p) for p in sorted(folder.glob("*.png"))]
    stand_in = ExactCameras(images, sc.w2c, sc.K, seed=3, depth=sc.depth)
    monkeypatch.setattr(dp, "load_da3", lambda weights, device: stand_in)
    config = dp.DA3ImagesDataParserConfig(
        data=folder, max_views_per_pass=8, chunk_size=chunk_size, eval_mode="all", device="cpu", colmap=True
    )
    parser = config.setup()
    parser.get_dataparser_outputs("train")
    assert len(stand_in.passes) == 4 if chunk_size is None else len(stand_in.passes) > 2
    parser.save_cameras(tmp_path / "run")
    rec = pycolmap.Reconstruction(str(tmp_path / "run" / "colmap" / "sparse" / "0"))
    assert rec.num_images() == FRAMES and rec.num_points3D() > 1000
    w2c = np.zeros((FRAMES, 4, 4))
    for image in rec.images.values():
        i = int(Path(image.name).stem.split("_")[1])
        assert (tmp_path / "run" / "colmap" / "images" / image.name).is_file()
        w2c[i, :3] = image.cam_from_world().matrix()
        w2c[i, 3, 3] = 1.0
        np.testing.assert_allclose(rec.cameras[image.camera_id].calibration_matrix(), sc.K[i], rtol=1e-5)
    gt = torch.from_numpy(sc.w2c).double()
    R, t, s = umeyama(camera_centers(torch.from_numpy(w2c)), camera_centers(gt))  # merged frame -> truth
    rel = []
    for point in rec.points3D.values():
        i = int(Path(rec.images[point.track.elements[0].image_id].name).stem.split("_")[1])
        x = s * R @ torch.from_numpy(point.xyz) + t
        cam = gt[i, :3, :3] @ x + gt[i, :3, 3]
        u, v = (sc.K[i] @ (cam / cam[2]).numpy())[:2]
        rel.append(abs(float(cam[2]) / sc.depth[i, int(v), int(u)] - 1))
    assert np.median(rel) < 1e-4 and np.max(rel) < 1e-3, (np.median(rel), np.max(rel))
