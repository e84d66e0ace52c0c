"""The plugin's pieces in-process: view choice, parameter mapping, camera passes, schedulers, the model's
rendering and frozen steps, the dataparser's camera file and its one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import apply_sim3_to_w2c, camera_centers, opencv_w2c_to_opengl_c2w
from da3_splat.rendering import render
from nerfstudio_plugin.initialise import choose_views, chunks, classic_gaussians, knn_mean_distance, to_splatfacto
from tests.render.test_camera_path import ring

pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")


def _gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    quats = torch.randn(n, 4, generator=gen)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.3,
        quats=quats / quats.norm(dim=-1, keepdim=True),
        scales=torch.rand(n, 3, generator=gen) * 0.05 + 0.01,
        opacities=torch.rand(n, generator=gen) * 0.9 + 0.05,
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.3,
    )


def test_chunks_are_balanced_runs():
    parts = chunks(list(range(17)), 8)
    assert [len(p) for p in parts] == [6, 6, 5]  # not 8, 8, 1: a 1-view chunk cannot be aligned by Umeyama
    assert sum(parts, []) == list(range(17))
    assert chunks([3, 5], 16) == [[3, 5]]


def test_choose_views_spreads_over_the_path():
    c2w = opencv_w2c_to_opengl_c2w(ring(24, span_deg=180).double())[:, :3]
    assert choose_views(c2w, 0) == list(range(24)) == choose_views(c2w, 30)
    picked = choose_views(c2w, 4)
    assert picked == sorted(picked) and len(set(picked)) == 4
    assert picked[0] <= 2 and picked[-1] >= 21  # both ends of the arc: farthest-point, not the first four


def test_knn_mean_distance_matches_brute_force():
    pts = torch.randn(300, 3)
    d = torch.cdist(pts, pts) + torch.eye(300) * 1e9
    expected = d.topk(3, largest=False).values.mean(1)
    torch.testing.assert_close(knn_mean_distance(pts, block=64), expected)


@pytest.mark.parametrize("model_degree", [0, 1, 3])
def test_splatfacto_parameters_round_trip(model_degree):
    g = _gaussians(50, 1)
    p = to_splatfacto(g, model_degree)
    assert p["features_rest"].shape == (50, (model_degree + 1) ** 2 - 1, 3) and p["opacities"].shape == (50, 1)
    dc = p["features_dc"]
    if model_degree == 0:  # splatfacto keeps logit(rgb) at degree 0
        dc = (torch.sigmoid(dc) - 0.5) / 0.28209479177387814
    back = Gaussians.from_splatfacto_params(p["means"], p["scales"], p["quats"], dc, p["features_rest"], p["opacities"])
    ref = g.with_sh_degree(model_degree)
    for name in ("means", "quats", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(back, name), getattr(ref, name), atol=1e-5, rtol=1e-5)


def test_classic_start():
    pts = torch.rand(64, 3)
    g = classic_gaussians(pts, torch.full((64, 3), 0.5), sh_degree=2)
    assert g.sh.shape == (64, 9, 3) and torch.allclose(g.sh[:, 0], torch.zeros(64, 3), atol=1e-6)
    assert torch.allclose(g.opacities, torch.full((64,), 0.1)) and (g.scales > 0).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(64))


class _PassModel:
    """Stands in for DA3: each pass reports the true cameras of its views in its own random similarity frame
    (as DA3 does: every pass fixes its own origin, orientation and scale)."""

    def __init__(self, w2c: torch.Tensor):
        self.w2c, self.calls, self.gen = w2c.double(), [], torch.Generator().manual_seed(1)

    def infer(self, images, process_res):
        ids = [int(im[0, 0, 0]) for im in images]  # each fake image carries its index
        self.calls.append(ids)
        from da3_splat.geometry import quat_xyzw_to_matrix

        q, t = (torch.randn(k, generator=self.gen, dtype=torch.float64) for k in (4, 3))
        R, s = quat_xyzw_to_matrix(q / q.norm()), 0.5 + torch.rand((), generator=self.gen, dtype=torch.float64)
        w2c = apply_sim3_to_w2c(self.w2c[ids], R, t, s)
        K = np.tile(np.array([[50.0, 0, 20], [0, 50, 10], [0, 0, 1]]), (len(ids), 1, 1))
        return SimpleNamespace(extrinsics=w2c[:, :3].numpy(), intrinsics=K, depth=np.zeros((len(ids), 20, 40)))


def test_predict_cameras_ties_passes_together_through_anchors():
    from da3_splat.geometry import umeyama
    from nerfstudio_plugin.dataparser import ANCHORS, predict_cameras

    true = ring(20, span_deg=120)
    images = [np.full((40, 80, 3), i, np.uint8) for i in range(20)]
    fake = _PassModel(true)
    w2c, K = predict_cameras(fake, images, process_res=56, max_views=8)
    assert len(fake.calls) > 1 and all(len(c) <= 8 for c in fake.calls)
    assert all(c[:ANCHORS] == fake.calls[0][:ANCHORS] for c in fake.calls)
    assert sorted(set(sum(fake.calls, []))) == list(range(20))
    # One similarity maps every predicted camera onto the truth: all passes share one frame.
    got = torch.from_numpy(w2c).double()
    R, t, s = umeyama(camera_centers(got), camera_centers(true.double()))
    torch.testing.assert_close(apply_sim3_to_w2c(got, R, t, s)[:, :3], true.double()[:, :3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(K[:, 0, 0], 50.0 * 80 / 40)  # processed pixels -> image pixels
    np.testing.assert_allclose(K[:, 1, 2], 10.0 * 40 / 20)


def test_learning_rates_stay_floats_so_checkpoints_load_safely():
    from nerfstudio_plugin.config import optimizers

    param = torch.nn.Parameter(torch.zeros(3))
    cfg = optimizers(max_steps=100)["means"]
    opt = cfg["optimizer"].setup(params=[param])
    sched = cfg["scheduler"].setup().get_scheduler(optimizer=opt, lr_init=cfg["optimizer"].lr)
    for _ in range(3):
        param.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert type(opt.param_groups[0]["lr"]) is float and all(type(x) is float for x in sched.get_last_lr())
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # what ns-eval / ns-export do


def _model(refine_steps=None, sh_degree=1):
    from nerfstudio.data.scene_box import SceneBox

    from nerfstudio_plugin.model import DA3SplatModelConfig

    cfg = DA3SplatModelConfig(
        refine_steps=refine_steps, sh_degree=sh_degree, num_downscales=0, background_color="black"
    )
    return cfg.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])),
        num_train_data=2,
        metadata={},
        device="cpu",
        seed_points=None,
    )


def _camera():
    from nerfstudio.cameras.cameras import Cameras

    w2c = torch.eye(4)
    w2c[2, 3] = 2.0  # the camera 2 units behind the origin, looking at it
    c2w = opencv_w2c_to_opengl_c2w(w2c)[None, :3]
    return Cameras(camera_to_worlds=c2w, fx=40.0, fy=40.0, cx=24.0, cy=16.0, width=48, height=32), w2c


def test_model_renders_like_da3_splat_render():
    model = _model()
    g = _gaussians(200, 1)
    model.set_gaussians(g)
    model.eval()
    model.step = 30000  # as after loading a checkpoint: every SH band on
    cam, w2c = _camera()
    out = model.get_outputs_for_camera(cam)
    K = torch.tensor([[[40.0, 0, 24], [0, 40, 16], [0, 0, 1]]])
    ref = render(g, w2c[None], K, 48, 32, sh_degree=1, background=torch.zeros(3), mode="RGB+ED")
    torch.testing.assert_close(out["rgb"], ref.colors[0].clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert out["depth"].shape == (32, 48, 1) and out["accumulation"].shape == (32, 48, 1)
    torch.testing.assert_close(model.gaussians().opacities, g.opacities, atol=1e-6, rtol=1e-6)


def test_frozen_model_leaves_parameters_alone():
    model = _model(refine_steps=0)
    model.set_gaussians(_gaussians(100, 1))
    model.train()
    model.step = 0
    assert model.frozen
    cam, _ = _camera()
    out = model(cam)
    loss = sum(model.get_loss_dict(out, {"image": torch.rand(32, 48, 3)}).values())
    loss.backward()
    assert all(p.grad is None for p in model.gauss_params.values())  # so Adam skips every parameter
    model.step_post_backward(0)  # no densification either (it would need the render's gradients)
    live = _model(refine_steps=5)
    live.train()
    assert not live.frozen


def test_first_step_keeps_feed_forward_opacities():
    """gsplat's strategy resets every opacity to at most 0.2 at step 0; the model must not let it."""
    model = _model()
    g = _gaussians(100, 1)
    g.opacities = torch.full((100,), 0.9)
    model.set_gaussians(g)
    model.train()
    model.step, model.optimizers = 0, {k: torch.optim.Adam([p], lr=0.0) for k, p in model.gauss_params.items()}
    cam, _ = _camera()
    out = model(cam)
    out["rgb"].sum().backward()
    model.step_post_backward(0)
    torch.testing.assert_close(torch.sigmoid(model.gauss_params["opacities"]).squeeze(-1), g.opacities)


def test_classic_starts_for_comparison():
    from nerfstudio_plugin.errors import DataError

    model = _model()
    model.config.init, model.config.num_random = "random", 300
    model.initialise([], torch.zeros(0, 3, 4), torch.zeros(0, 3, 3), log=lambda msg: None)
    assert model.num_points == 300 and model.means.abs().max() <= model.config.random_scale / 2
    model.config.init = "points"
    with pytest.raises(DataError, match="point cloud"):
        model.initialise([], torch.zeros(0, 3, 4), torch.zeros(0, 3, 3), log=lambda msg: None)
    model.seed_points = (torch.rand(50, 3), torch.full((50, 3), 255, dtype=torch.uint8))
    model.initialise([], torch.zeros(0, 3, 4), torch.zeros(0, 3, 3), log=lambda msg: None)
    assert model.num_points == 50 and torch.allclose(model.colors, torch.ones(50, 3), atol=1e-5)


def test_camera_file_round_trip(tmp_path):
    """save_cameras writes a transforms.json that reads back to the same cameras, for this parser and for
    nerfstudio's own nerfstudio-data parser (image paths relative to the run folder)."""
    import cv2
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig, read_cameras

    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.png"), np.full((30, 40, 3), 40 * i, np.uint8))
        paths.append((photos / f"p{i}.png").resolve())
    parser = DA3ImagesDataParserConfig(data=photos).setup()
    w2c = ring(3, span_deg=60).numpy()
    K = np.tile(np.array([[35.0, 0, 20], [0, 36, 15], [0, 0, 1]], np.float32), (3, 1, 1))
    parser._images, parser._cameras = paths, (w2c, K, np.array([[30, 40]] * 3))
    file = parser.save_cameras(tmp_path / "run")
    assert parser.config.cameras == file and file == (tmp_path / "run" / "transforms.json").resolve()
    w2c2, K2, sizes = read_cameras(file, paths)
    np.testing.assert_allclose(w2c2, w2c, atol=1e-5)
    np.testing.assert_allclose(K2, K)
    assert (sizes == [30, 40]).all()
    outputs = NerfstudioDataParserConfig(data=file.parent, eval_mode="all").setup().get_dataparser_outputs("train")
    assert sorted(p.resolve() for p in outputs.image_filenames) == paths
    assert json.loads(file.read_text())["frames"][0]["file_path"] == "../photos/p0.png"


def test_video_frames_are_extracted_once(tmp_path, monkeypatch):
    import cv2

    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(6):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    frames = DA3ImagesDataParserConfig(data=video, video_stride=2).setup().images()
    assert [p.name for p in frames] == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
    assert frames[0].is_relative_to(tmp_path / "cache") and cv2.imread(str(frames[1])).shape == (24, 32, 3)
    stamp = frames[0].stat().st_mtime_ns
    assert DA3ImagesDataParserConfig(data=video, video_stride=2).setup().images() == frames
    assert frames[0].stat().st_mtime_ns == stamp  # reused, not decoded again


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, "no images"),
        ({"a.png": "image"}, "has 1 image; da3-images needs at least 2"),
        ({"a.png": "image", "b.png": b"not an image"}, "cannot read image"),
    ],
)
def test_da3_images_bad_folders_are_one_line(tmp_path, capsys, files, match):
    import cv2

    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig

    for name, content in files.items():
        if content == "image":
            cv2.imwrite(str(tmp_path / name), np.zeros((20, 30, 3), np.uint8))
        else:
            (tmp_path / name).write_bytes(content)
    parser = DA3ImagesDataParserConfig(data=tmp_path, weights="random:da3-small").setup()
    with pytest.raises(SystemExit) as exit_info:
        parser.get_dataparser_outputs("train")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([{"file_path": "images/a.png"}], "has 1 frame"),
        ([{"file_path": "images/a.png"}, {"file_path": "../elsewhere/b.png"}], "outside the folder"),
        ([{"file_path": "images/a.png"}, {"file_path": "/abs/b.png"}], "is absolute"),
    ],
)
def test_nerfstudio_data_checks(tmp_path, frames, match):
    from da3_splat.errors import InputError
    from nerfstudio_plugin.errors import DataError
    from nerfstudio_plugin.pipeline import check_nerfstudio_data

    c2w = np.eye(4).tolist()
    meta = {
        "fl_x": 30,
        "fl_y": 30,
        "cx": 20,
        "cy": 15,
        "w": 40,
        "h": 30,
        "frames": [{**f, "transform_matrix": c2w} for f in frames],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises((DataError, InputError), match=match):
        check_nerfstudio_data(tmp_path)
    with pytest.raises(DataError, match="no transforms.json"):
        check_nerfstudio_data((tmp_path / "empty").mkdir() or tmp_path / "empty")


BUNDLED = Path(__file__).resolve().parents[2] / "da3_splat" / "weights" / "da3-tiny-synthetic"


def _target_psnr(model, cameras, images) -> float:
    model.eval()
    model.step = 30000
    values = []
    for i in range(len(cameras)):
        rgb = model.get_outputs_for_camera(cameras[i : i + 1])["rgb"]
        mse = torch.mean((rgb - torch.from_numpy(images[i]).float() / 255) ** 2)
        values.append(-10 * torch.log10(mse).item())
    return sum(values) / len(values)


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="the bundled model is not there")
def test_bundled_model_starts_far_ahead_of_a_random_start(synthetic_scene):
    """Real weights, no refinement: the default (bundled) DA3's Gaussians render the held-out targets of a
    synthetic scene much better than splatfacto's random start does."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from PIL import Image

    parser = NerfstudioDataParserConfig(data=synthetic_scene, downscale_factor=4, eval_mode="interval").setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")

    def load(outputs):
        return [np.asarray(Image.open(f).convert("RGB")) for f in outputs.image_filenames]

    psnr = {}
    for init in ("da3", "random"):
        model = _model(sh_degree=1)
        model.config.init, model.config.num_views, model.config.process_res = init, 12, 224
        model.config.max_gaussians = model.config.num_random = 20000
        cams = train.cameras
        model.initialise(load(train), cams.camera_to_worlds, cams.get_intrinsics_matrices(), log=lambda m: None)
        psnr[init] = _target_psnr(model, test.cameras, load(test))
    # Measured: 20.3 vs 14.7 dB. A broken placement (scale, cameras, opacities) lands near or below the random one.
    assert psnr["da3"] > psnr["random"] + 1.0 and psnr["da3"] > 15.5, psnr


def test_long_captures_merge_as_they_go(monkeypatch):
    """Past MERGE_AT x the budget of pixel Gaussians, the chunks so far are merged (to twice the budget) before the
    next one, so a long capture never holds every pixel; the final start still meets the budget."""
    from nerfstudio_plugin import initialise
    from tests.nerfstudio_plugin.conftest import tiny_da3

    model = tiny_da3(False)
    h, w = 126, 224
    gen = np.random.default_rng(0)
    images = [gen.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(6)]
    c2w = torch.eye(4).repeat(6, 1, 1)
    c2w[:, 0, 3] = torch.linspace(0, 1, 6)
    K = torch.tensor([[200.0, 0, w / 2], [0, 200.0, h / 2], [0, 0, 1]]).repeat(6, 1, 1)
    merges = []
    real = initialise.reduce_to_budget
    monkeypatch.setattr(
        initialise, "reduce_to_budget", lambda g, **kw: merges.append((g.num_gaussians, kw)) or real(g, **kw)
    )
    monkeypatch.setattr(initialise, "MERGE_AT", 1)
    settings = initialise.FeedForwardSettings("tiny", 0, 2, None, 3000, 0.0, False)
    said = []
    g = initialise.feedforward_gaussians(images, c2w, K, settings, "cpu", lambda *a: model, log=said.append)
    assert g.num_gaussians <= 3000
    intermediate = [n for n, kw in merges if kw["max_gaussians"] == 6000]
    chunk = intermediate[0]  # the first chunk's pixels (2 views) alone pass the threshold
    assert len(intermediate) == 3 and all(n <= chunk + 6000 for n in intermediate), merges  # never all 6 views
    total = int(said[0].split(" pixel Gaussians")[0].split(": ")[-1].replace(",", ""))
    assert total > 2.5 * chunk and said[0].endswith(f"-> {g.num_gaussians:,}")
