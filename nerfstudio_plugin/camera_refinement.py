"""Cameras that DA3 predicted (``da3-images``): refined in training, aligned at evaluation.

Predicted cameras are a few tenths of a degree to a few degrees off. Two consequences, two remedies:

- Training: the Gaussians would bend to fit slightly wrong cameras. splatfacto's camera optimiser (a learned
  SO3xR3 correction per training view, parameter group ``camera_opt``) is therefore on by default when the cameras
  were predicted, and off for posed data, whose cameras are taken as right (``--pipeline.model.camera-refinement``).
- Evaluation: a held-out view has no learned correction, and its predicted pose is as far off as a training
  view's was; scored as it is, its PSNR measures the pose error more than the Gaussians. Each held-out camera is
  therefore refined on its own image with the Gaussians frozen before it is scored (the pose-free protocol of
  ``da3_splat.pose_refine``), and what moved goes into the metrics (``--pipeline.model.eval-pose-refinement-steps``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from da3_splat.geometry import opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from da3_splat.pose_refine import PoseRefineSettings, refine_target_poses
from nerfstudio_plugin.errors import DataError

# The model and pipeline config are typed loosely: model.py and pipeline.py import this module, so naming their
# classes here (even for type checkers only) would close an import cycle.
DA3SplatModel = Any  # nerfstudio_plugin.model.DA3SplatModel
DA3SplatPipelineConfig = Any  # nerfstudio_plugin.pipeline.DA3SplatPipelineConfig

CameraRefinement = Literal["auto", "on", "off"]
REFINED_MODE = "SO3xR3"  # splatfacto's recommended mode: rotation and translation corrected independently
AUTO_EVAL_STEPS = 100  # PoseRefineSettings' default budget; it stops early once the loss settles
ALIGNMENT_KEY = "pose_alignment"  # batch entry that carries one eval view's alignment metrics to the model


def cameras_are_predicted(dataparser_config: Any) -> bool:
    """True when the dataparser predicts the cameras with DA3 (``da3-images``)."""
    from nerfstudio_plugin.dataparser import DA3ImagesDataParserConfig  # lazy: see the note in dataparser.py

    return isinstance(dataparser_config, DA3ImagesDataParserConfig)


def camera_optimizer_mode(refinement: CameraRefinement, given_mode: str, predicted: bool) -> str:
    """The camera optimiser's mode. A mode other than "off" was asked for explicitly and is kept; "off", the
    default, cannot be told apart from an explicit "off", so ``refinement`` decides then ("off" switches it off)."""
    if given_mode != "off":
        return given_mode
    if refinement == "on" or (refinement == "auto" and predicted):
        return REFINED_MODE
    return "off"


def eval_alignment_steps(steps: int | None, predicted: bool) -> int:
    """Pose-refinement steps per held-out view before it is scored (None: auto)."""
    if steps is None:
        return AUTO_EVAL_STEPS if predicted else 0
    if steps < 0:
        raise DataError(f"--pipeline.model.eval-pose-refinement-steps must be >= 0, got {steps}")
    return steps


def resolve_camera_refinement(config: DA3SplatPipelineConfig) -> tuple[str, int]:
    """Decide both settings from the dataparser; -> (camera optimiser mode, eval alignment steps).

    Sets ``config.model.camera_optimizer.mode``, so it must run before the model is built (the model creates its
    camera optimiser, and the optimisers' param groups, from it). Deterministic, so a checkpoint's loader (ns-eval,
    ns-export, ns-viewer) builds the same camera optimiser as the training run and its state loads."""
    model = config.model
    predicted = cameras_are_predicted(config.datamanager.dataparser)
    mode = camera_optimizer_mode(model.camera_refinement, model.camera_optimizer.mode, predicted)
    model.camera_optimizer = dataclasses.replace(model.camera_optimizer, mode=mode)
    return mode, eval_alignment_steps(model.eval_pose_refinement_steps, predicted)


def align_eval_camera(
    model: DA3SplatModel, camera: Cameras, image: Tensor, settings: PoseRefineSettings
) -> tuple[Cameras, dict[str, float]]:
    """Refine one held-out camera on its image (the eval batch's) with the model's Gaussians frozen.

    -> (the camera at the refined pose, metrics): degrees and distance moved (nerfstudio's normalised units, and
    as a fraction of the median camera-to-Gaussian distance), the steps taken and the PSNR at the given pose."""
    camera = camera.to(model.device)
    background = model._get_background_color()  # evaluation's (the model is in eval mode here)
    gt = model.composite_with_background(model.get_gt_img(image), background)[..., :3]  # (H, W, 3)
    with torch.no_grad():
        unaligned = model.get_outputs_for_camera(camera)["rgb"]
    c2w = camera.camera_to_worlds.reshape(-1, 3, 4)
    refined, info = refine_target_poses(
        model.gaussians(),
        opengl_c2w_to_opencv_w2c(c2w),
        camera.get_intrinsics_matrices().reshape(-1, 3, 3).to(model.device),
        gt.permute(2, 0, 1)[None],
        settings,
        sh_degree=model.render_sh_degree(),
        background=background,
    )
    aligned = dataclasses.replace(camera)  # a new Cameras sharing the intrinsics; only the pose changes
    aligned.camera_to_worlds = opencv_w2c_to_opengl_c2w(refined)[:, :3].to(c2w).reshape(camera.camera_to_worlds.shape)
    metrics = {
        "psnr_unaligned": _psnr(unaligned, gt),
        "pose_align_rotation_deg": info.rotation_deg[0],
        "pose_align_translation": info.translation[0],
        "pose_align_translation_rel": info.translation[0] / info.depth_unit,
        "pose_align_steps": float(info.steps),
    }
    return aligned, metrics


def _psnr(pred: Tensor, gt: Tensor) -> float:
    mse = float(torch.mean((pred.clamp(0, 1) - gt) ** 2))
    return -10.0 * math.log10(max(mse, 1e-10))


class AlignedEvalImages:
    """An eval loader's (camera, batch) pairs, each camera aligned by :func:`align_eval_camera` and its metrics in
    ``batch[ALIGNMENT_KEY]`` (the model's ``get_image_metrics_and_images`` reports them, so nerfstudio averages
    them with the image metrics). Alignment happens as the pairs are drawn, after the pipeline entered eval mode."""

    def __init__(
        self, loader: Iterable[tuple[Cameras, dict]], model: DA3SplatModel, settings: PoseRefineSettings
    ) -> None:
        self.pairs = list(loader)
        self.model = model
        self.settings = settings

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[Cameras, dict]]:
        for camera, batch in self.pairs:
            aligned, metrics = align_eval_camera(self.model, camera, batch["image"], self.settings)
            yield aligned, {**batch, ALIGNMENT_KEY: metrics}
