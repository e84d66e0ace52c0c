"""Cameras predicted by DA3 (da3-images): splatfacto's camera optimiser on by default while training, and each
held-out pose aligned to its image before ns-eval scores it. Posed data keeps both off."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from da3_splat.pose_refine import PoseRefineSettings, apply_pose_delta, pose_change
from da3_splat.rendering import render

pytest.importorskip("nerfstudio", reason="the nerfstudio extra is not installed (make test installs it)")

BUNDLED = Path(__file__).resolve().parents[2] / "da3_splat" / "weights" / "da3-tiny-synthetic"


def _pipeline_config(parser: str):
    """The method's own pipeline config (a copy), with the given dataparser."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerfstudio_plugin.config import da3_splat_method
    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig

    config = copy.deepcopy(da3_splat_method.config.pipeline)
    config.datamanager.dataparser = (
        DA3ImagesDataParserConfig() if parser == "da3-images" else NerfstudioDataParserConfig()
    )
    return config


@pytest.mark.parametrize(
    ("parser", "refinement", "given_mode", "mode", "eval_steps"),
    [
        ("da3-images", "auto", "off", "SO3xR3", 100),
        ("nerfstudio-data", "auto", "off", "off", 0),
        ("nerfstudio-data", "on", "off", "SO3xR3", 0),
        ("da3-images", "off", "off", "off", 100),
        ("da3-images", "auto", "SE3", "SE3", 100),  # an explicit mode wins ...
        ("nerfstudio-data", "off", "SE3", "SE3", 0),  # ... whatever camera-refinement says
    ],
)
def test_camera_refinement_follows_the_dataparser(parser, refinement, given_mode, mode, eval_steps):
    from nerfstudio_plugin.camera_refinement import resolve_camera_refinement

    config = _pipeline_config(parser)
    config.model.camera_refinement = refinement
    config.model.camera_optimizer.mode = given_mode
    assert resolve_camera_refinement(config) == (mode, eval_steps)
    assert config.model.camera_optimizer.mode == mode


def test_eval_alignment_steps_explicit_and_checked():
    from nerfstudio_plugin.camera_refinement import resolve_camera_refinement
    from nerfstudio_plugin.errors import DataError

    config = _pipeline_config("nerfstudio-data")
    config.model.eval_pose_refinement_steps = 7
    assert resolve_camera_refinement(config) == ("off", 7)
    config.model.eval_pose_refinement_steps = -1
    with pytest.raises(DataError, match="eval-pose-refinement-steps must be >= 0"):
        resolve_camera_refinement(config)


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").is_file(), reason="the bundled model is not there")
def test_predicted_cameras_are_refined_in_training_and_aligned_at_eval(tmp_path, synthetic_scene):
    """A tiny da3-images run in-process: the camera optimiser has its param group and optimiser, its parameters
    move, the checkpoint holds them (ns-eval loads it), and ns-eval reports the held-out alignment."""
    from nerfstudio.scripts.eval import ComputePSNR

    from nerfstudio_plugin.config import da3_splat_method
    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig

    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((synthetic_scene / "images_4").glob("*.png"))[:10]:
        (photos / src.name).write_bytes(src.read_bytes())
    config = copy.deepcopy(da3_splat_method.config)
    config.output_dir, config.vis, config.machine.device_type = tmp_path / "out", "tensorboard", "cpu"
    config.max_num_iterations = 6
    config.pipeline.datamanager.dataparser = DA3ImagesDataParserConfig(data=photos, process_res=112, device="cpu")
    model_config = config.pipeline.model
    model_config.process_res, model_config.max_gaussians, model_config.num_views = 112, 3000, 6
    model_config.eval_pose_refinement_steps = 10
    assert "camera_opt" in config.optimizers
    config.set_timestamp()
    config.save_config()
    torch.manual_seed(0)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    assert model.camera_optimizer.config.mode == "SO3xR3"
    assert model.camera_optimizer.pose_adjustment.shape == (8, 6)  # 10 images, 0 and 8 held out
    assert "camera_opt" in trainer.optimizers.optimizers
    assert trainer.optimizers.parameters["camera_opt"][0] is model.camera_optimizer.pose_adjustment
    trainer.train()
    moved = model.camera_optimizer.pose_adjustment.detach()
    assert torch.isfinite(moved).all() and (moved.abs().sum(-1) > 0).sum() >= 4, moved

    (ckpt,) = (trainer.base_dir / "nerfstudio_models").glob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)["pipeline"]["_model.camera_optimizer.pose_adjustment"]
    torch.testing.assert_close(saved, moved)
    output = tmp_path / "eval.json"
    ComputePSNR(load_config=trainer.base_dir / "config.yml", output_path=output).main()
    results = json.loads(output.read_text())["results"]
    for key in ("psnr", "psnr_unaligned", "pose_align_rotation_deg", "pose_align_translation", "pose_align_steps"):
        assert math.isfinite(results[key]), key
    assert 0 < results["pose_align_steps"] <= 10


def _scene(n: int = 600, seed: int = 0) -> Gaussians:
    """Small opaque splats with random colours on a wavy sheet one unit in front of the camera: enough texture
    for the photometric loss to locate the camera."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 2 - 1
    z = 0.15 * torch.sin(3 * xy[:, :1]) * torch.cos(2 * xy[:, 1:])
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    return Gaussians(
        means=torch.cat([xy, z], -1),
        quats=quats,
        scales=torch.full((n, 3), 0.05),
        opacities=torch.full((n,), 0.95),
        sh=torch.randn(n, 1, 3, generator=gen),
    )


@pytest.fixture
def one_thread():
    """The renderer's many small ops run far faster on one thread on shared cores; restored afterwards, so later
    tests (DDP equivalence among them) keep the thread count they expect."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval_alignment_recovers_a_perturbed_pose(one_thread):
    """The model's eval path on a held-out view whose pose is 2 degrees and 0.05 units off: aligned, the render
    lines up with the image again (PSNR up by several dB), and the metrics carry what moved."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.data.scene_box import SceneBox

    from nerfstudio_plugin.camera_refinement import ALIGNMENT_KEY, align_eval_camera
    from nerfstudio_plugin.model import DA3SplatModelConfig

    model = DA3SplatModelConfig(sh_degree=0, num_downscales=0, background_color="black").setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])),
        num_train_data=2,
        metadata={},
        device="cpu",
        seed_points=None,
    )
    g = _scene()
    model.set_gaussians(g)
    model.eval()
    model.step = 30000  # as after loading a checkpoint
    W, H, f = 96, 64, 70.0
    true_w2c = torch.eye(4)
    true_w2c[2, 3] = 1.5
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    image = render(g, true_w2c[None], K[None], W, H, sh_degree=0, background=torch.zeros(3)).colors[0].clamp(0, 1)
    off = apply_pose_delta(true_w2c, torch.tensor([0.0, math.radians(2.0), 0.0, 0.05, 0.0, 0.0]))
    camera = Cameras(
        camera_to_worlds=opencv_w2c_to_opengl_c2w(off)[None, :3], fx=f, fy=f, cx=W / 2, cy=H / 2, width=W, height=H
    )
    batch = {"image": (image * 255).round().to(torch.uint8), "image_idx": 0}

    aligned, alignment = align_eval_camera(model, camera, batch["image"], PoseRefineSettings(steps=60))
    outputs = model.get_outputs_for_camera(aligned)
    metrics, _ = model.get_image_metrics_and_images(outputs, {**batch, ALIGNMENT_KEY: alignment})
    assert metrics["psnr"] > metrics["psnr_unaligned"] + 5.0, metrics
    assert 1.0 < metrics["pose_align_rotation_deg"] < 3.0 and metrics["pose_align_translation"] > 0.02, metrics
    rot, dist = pose_change(opengl_c2w_to_opencv_w2c(aligned.camera_to_worlds[0]), true_w2c)
    assert rot < 0.5 and dist < 0.02, (rot, dist)
    assert camera.camera_to_worlds.equal(opencv_w2c_to_opengl_c2w(off)[None, :3])  # the input camera is untouched
