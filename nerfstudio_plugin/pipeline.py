"""Pipeline and datamanager of ``da3-splat``.

nerfstudio builds the model before it hands it any image, so the pipeline runs the feed-forward step itself,
right after the datamanager has loaded (and undistorted) the training images and before the trainer creates the
optimisers: the model's parameters are final by then. Only when training (``test_mode == "val"``): ``ns-eval``,
``ns-export`` and ``ns-viewer`` load a checkpoint and need no DA3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.callbacks import TrainingCallbackAttributes
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from da3_splat.data.transforms import TRANSFORMS_FILE, read_transforms
from da3_splat.pose_refine import PoseRefineSettings
from nerfstudio_plugin.camera_refinement import AlignedEvalImages, resolve_camera_refinement
from nerfstudio_plugin.errors import DataError, one_line_errors

MIN_VIEWS = 2


def check_nerfstudio_data(data: Path | None) -> None:
    """Cheap checks of a ``nerfstudio-data`` scene before nerfstudio reads it (its own failures are tracebacks):
    the transforms file exists, parses, has at least two frames, and every file_path stays inside its folder."""
    if data is None:
        raise DataError("no data given: pass --data SCENE (a folder with transforms.json, or the file itself)")
    data = Path(data)
    if not data.exists():
        raise DataError(f"data not found: {data}")
    file = data if data.suffix == ".json" else data / TRANSFORMS_FILE
    if not file.is_file():
        raise DataError(
            f"no {TRANSFORMS_FILE} in {data}; for photos or a video without cameras use the da3-images dataparser: "
            f"ns-train da3-splat --data {data} da3-images"
        )
    paths = read_transforms(file)[0]  # InputError names the first bad frame (paths outside the folder included)
    if len(paths) < MIN_VIEWS:
        raise DataError(f"{file} has {len(paths)} frame; da3-splat needs at least {MIN_VIEWS} views")


@dataclass
class DA3DatamanagerConfig(FullImageDatamanagerConfig):
    """Full images, as splatfacto; checks the data first and never pins memory on a machine without CUDA."""

    _target: type = field(default_factory=lambda: DA3Datamanager)
    cache_images_type: Literal["uint8", "float32"] = "uint8"


class DA3Datamanager(FullImageDatamanager):
    config: DA3DatamanagerConfig

    def __init__(
        self, config: DA3DatamanagerConfig, device="cpu", test_mode="val", world_size=1, local_rank=0, **kwargs
    ):
        if isinstance(config.dataparser, NerfstudioDataParserConfig):
            check_nerfstudio_data(config.data if config.data is not None else config.dataparser.data)
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        if torch.device(device).type != "cuda" and self.config.cache_images == "cpu":
            # Above 500 training images nerfstudio caches on "cpu", which pins memory: that needs CUDA. Without
            # CUDA the training device is the CPU anyway, and "gpu" means "on the training device", unpinned.
            self.config.cache_images = "gpu"
        if len(self.train_dataset) < 1:
            raise DataError("the training split is empty: every image went to evaluation (check the eval mode)")


@dataclass
class DA3SplatPipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: DA3SplatPipeline)


class DA3SplatPipeline(VanillaPipeline):
    def __init__(
        self, config: DA3SplatPipelineConfig, device, test_mode="val", world_size=1, local_rank=0, grad_scaler=None
    ):
        with one_line_errors("the training data"):
            # Before the model exists: it builds its camera optimiser from the resolved mode.
            mode, eval_steps = resolve_camera_refinement(config)
            super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
            self.eval_alignment_steps = eval_steps
            if test_mode == "val":
                CONSOLE.log(f"Camera refinement: {mode}; held-out pose alignment at evaluation: {eval_steps} steps")
                self._initialise_model()

    def _initialise_model(self) -> None:
        dm = self.datamanager
        cached = dm.cached_train  # loads and undistorts; undistortion updates the cameras' intrinsics
        cameras = dm.train_dataset.cameras
        images = [_uint8(entry["image"]) for entry in cached]
        with torch.no_grad():
            self.model.initialise(images, cameras.camera_to_worlds, cameras.get_intrinsics_matrices(), CONSOLE.log)

    def get_average_eval_image_metrics(self, step: int | None = None, output_path: Path | None = None, get_std=False):
        """nerfstudio's average over the held-out views (ns-eval, and the trainer's all-image evaluation), each
        view's camera first aligned to its image when ``eval_alignment_steps`` > 0 (see camera_refinement)."""
        if self.eval_alignment_steps == 0:
            return super().get_average_eval_image_metrics(step, output_path, get_std)
        settings = PoseRefineSettings(steps=self.eval_alignment_steps)
        loader = AlignedEvalImages(self.datamanager.fixed_indices_eval_dataloader, self.model, settings)
        return self.get_average_image_metrics(loader, "eval", step, output_path, get_std)

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        # Set-up time, with the run folder known: a dataparser that predicted cameras (da3-images) records them
        # there, and the saved config points at them so ns-eval / ns-export / ns-viewer reuse them.
        trainer = training_callback_attributes.trainer
        parser = getattr(self.datamanager, "dataparser", None)
        if trainer is not None and hasattr(parser, "save_cameras"):
            if parser.save_cameras(Path(trainer.base_dir)):
                trainer.config.save_config()
        return super().get_training_callbacks(training_callback_attributes)


def _uint8(image: torch.Tensor) -> np.ndarray:
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image[..., :3].numpy()
