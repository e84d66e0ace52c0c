"""``DA3SplatModel``: splatfacto that starts from DA3's Gaussians and renders through ``da3_splat.rendering``.

It keeps splatfacto's parameter layout (``gauss_params``), losses, densification strategy and metrics, so
``ns-viewer``, ``ns-eval``, ``ns-render`` and ``ns-export gaussian-splat`` treat it as splatfacto. What changes:

- ``populate_modules`` builds empty parameters; :meth:`DA3SplatModel.initialise` (called by the pipeline once the
  training images are loaded) fills them from DA3 feed-forward, or from random points / the dataset's point
  cloud for comparison. splatfacto's own set-up would also download LPIPS weights and move tensors to CUDA unconditionally.
- ``get_outputs`` renders with ``da3_splat.rendering.render``: gsplat on CUDA, the project's torch renderer elsewhere.
- ``refine_steps``: after that many steps the Gaussians are frozen and training stops; 0 gives the pure
  feed-forward result (one no-op step, then the checkpoint).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.lib_bilagrid import BilateralGrid
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.colors import get_color
from pytorch_msssim import SSIM
from torch import Tensor
from torch.nn import Parameter, ParameterDict

from da3_splat.gaussians import Gaussians
from da3_splat.geometry import opengl_c2w_to_opencv_w2c
from da3_splat.rendering import render
from nerfstudio_plugin.camera_refinement import ALIGNMENT_KEY, CameraRefinement
from nerfstudio_plugin.errors import DataError
from nerfstudio_plugin.initialise import (
    DEFAULT_WEIGHTS,
    FeedForwardSettings,
    classic_gaussians,
    feedforward_gaussians,
    load_da3,
    random_points,
    to_splatfacto,
)

# Background at evaluation when training uses random backgrounds: the viewer's own background colour, as splatfacto.
_EVAL_BACKGROUND = (0.1490, 0.1647, 0.2157)


@dataclass
class DA3SplatModelConfig(SplatfactoModelConfig):
    """splatfacto's options, plus where the Gaussians start."""

    _target: type = field(default_factory=lambda: DA3SplatModel)
    weights: str = DEFAULT_WEIGHTS
    """DA3 weights: bundled name, Hugging Face repo id, folder with config.json + model.safetensors, .safetensors
    file, or random:CONFIG (tests only)."""
    init: Literal["da3", "random", "points"] = "da3"
    """Start from DA3 feed-forward Gaussians, from random points (num-random in a cube of side random-scale), or
    from the dataset's point cloud (needs ply_file_path and --pipeline.datamanager.dataparser.load-3D-points)."""
    num_views: int = 0
    """Training views DA3 sees (farthest-point subset over position and direction); 0: all of them."""
    chunk_size: int = 16
    """Views per DA3 pass; lower it when memory is short (each chunk is aligned to the known cameras)."""
    process_res: int | None = None
    """Longest side, in pixels, of the images DA3 sees (then rounded to multiples of 14)
    (default: the model's own: 504 for the official models, the training resolution for models trained here)."""
    max_gaussians: int = 500_000
    """Budget for the feed-forward Gaussians (neighbours are voxel-merged to fit)."""
    conf_percentile: float = 0.0
    """Drop the pixels below this percentile of DA3's depth confidence (per chunk). 0 keeps them all: the
    opacities already carry the confidence, and dropped pixels leave holes that refinement must fill first
    (a GS head's start on synthetic targets: 16.8 dB keeping all, 12.6 dB at the 30th percentile)."""
    use_gs_head: bool = True
    """Use the checkpoint's Gaussian head when it has one; otherwise (or when off) one splat per pixel from depth."""
    refine_steps: int | None = None
    """Per-scene refinement steps; training stops after them (0: the feed-forward result as it is). None: run
    --max-num-iterations steps."""
    camera_refinement: CameraRefinement = "auto"
    """Refine the training cameras while training (splatfacto's camera optimiser, SO3xR3). auto: on when DA3
    predicted the cameras (da3-images), off for posed data. A --pipeline.model.camera-optimizer.mode other than
    off is used as given; to switch it off for da3-images use this option."""
    eval_pose_refinement_steps: int | None = None
    """Before a held-out view is scored (ns-eval), refine its camera on its own image with the Gaussians frozen,
    for at most this many steps (0: score it at its given pose). None: 100 when DA3 predicted the cameras, else 0."""


class _OptionalLPIPS:
    """LPIPS (AlexNet) when its weights are already on disk, else NaN; never downloads. Not a submodule, so
    checkpoints do not depend on it."""

    def __init__(self):
        self._metric = None
        self._checked = False

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        if not self._checked:
            self._checked = True
            from da3_splat.image_metrics import alexnet_weights_present

            if alexnet_weights_present():
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                self._metric = LearnedPerceptualImagePatchSimilarity(normalize=True)
        if self._metric is None:
            return torch.tensor(float("nan"))
        self._metric = self._metric.to(a.device)
        return self._metric(a, b)


class DA3SplatModel(SplatfactoModel):
    config: DA3SplatModelConfig

    def populate_modules(self):
        rest = (self.config.sh_degree + 1) ** 2 - 1
        shapes = {
            "means": (0, 3),
            "scales": (0, 3),
            "quats": (0, 4),
            "features_dc": (0, 3),
            "features_rest": (0, rest, 3),
            "opacities": (0, 1),
        }
        self.gauss_params = ParameterDict({k: Parameter(torch.zeros(s)) for k, s in shapes.items()})
        self.init_sh_degree = 0  # SH bands the initial Gaussians already use (a GS head's)
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.lpips = _OptionalLPIPS()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            self.background_color = torch.tensor(_EVAL_BACKGROUND)
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            X, Y, W = self.config.grid_shape
            self.bil_grids = BilateralGrid(num=self.num_train_data, grid_X=X, grid_Y=Y, grid_W=W)
        c = self.config
        self.strategy = DefaultStrategy(
            prune_opa=c.cull_alpha_thresh,
            grow_grad2d=c.densify_grad_thresh,
            grow_scale3d=c.densify_size_thresh,
            grow_scale2d=c.split_screen_size,
            prune_scale3d=c.cull_scale_thresh,
            prune_scale2d=c.cull_screen_size,
            refine_scale2d_stop_iter=c.stop_screen_size_at,
            refine_start_iter=c.warmup_length,
            refine_stop_iter=c.stop_split_at,
            reset_every=c.reset_alpha_every * c.refine_every,
            refine_every=c.refine_every,
            pause_refine_after_reset=self.num_train_data + c.refine_every,
            absgrad=c.use_absgrad,
            revised_opacity=False,
            verbose=True,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    # ----------------------------------------------------------------------------------------------
    # Initial Gaussians

    def initialise(self, images: Sequence[np.ndarray], c2w: Tensor, K: Tensor, log: Callable[[str], None] = print):
        """Fill the parameters from the training views: images N HxWx3 uint8, c2w (N, 3, 4) nerfstudio camera-to-
        world (the dataset's normalised frame), K (N, 3, 3) pixels."""
        c = self.config
        if c.init == "da3":
            settings = FeedForwardSettings(
                c.weights, c.num_views, c.chunk_size, c.process_res, c.max_gaussians, c.conf_percentile, c.use_gs_head
            )
            g = feedforward_gaussians(images, c2w, K, settings, self.device, load_model=load_da3, log=log)
            self.init_sh_degree = min(g.sh_degree, c.sh_degree)
        elif c.init == "points":
            if self.seed_points is None:
                raise DataError(
                    "--pipeline.model.init points needs the dataset's point cloud: a ply_file_path in transforms.json "
                    "and --pipeline.datamanager.dataparser.load-3D-points True"
                )
            xyz, rgb = self.seed_points
            g = classic_gaussians(xyz.float(), rgb.float() / 255.0, c.sh_degree)
            log(f"{g.num_gaussians:,} Gaussians from the dataset's point cloud")
        else:
            g = classic_gaussians(random_points(c.num_random, c.random_scale), None, c.sh_degree)
            log(f"{g.num_gaussians:,} random Gaussians")
        self.set_gaussians(g)

    def set_gaussians(self, g: Gaussians) -> None:
        for name, value in to_splatfacto(g, self.config.sh_degree).items():
            self.gauss_params[name] = Parameter(value.to(self.device))

    def gaussians(self) -> Gaussians:
        """The current Gaussians (activated values), e.g. for analysis or the project's own PLY writer."""
        p = self.gauss_params
        sh = torch.cat([self.shs_0[:, None], p["features_rest"]], dim=1)
        return Gaussians(p["means"], p["quats"], p["scales"].exp(), torch.sigmoid(p["opacities"]).squeeze(-1), sh)

    # ----------------------------------------------------------------------------------------------
    # Rendering

    @property
    def frozen(self) -> bool:
        """True once the refinement budget is spent: steps change nothing."""
        return self.training and self.config.refine_steps is not None and self.step >= self.config.refine_steps

    def get_outputs(self, camera: Cameras) -> dict:
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "training renders one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        g = self._gaussians_in_crop()
        background = self._get_background_color()
        d = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / d)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(d)
        if g is None:
            return self.get_empty_outputs(W, H, self.background_color)
        with_depth = self.config.output_depth_during_training or not self.training
        sh_degree = self.render_sh_degree()
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            out = render(
                g,
                opengl_c2w_to_opencv_w2c(c2w.reshape(-1, 3, 4).to(self.device)),
                K.reshape(-1, 3, 3),
                W,
                H,
                sh_degree=sh_degree,
                background=background,
                mode="RGB+ED" if with_depth else "RGB",
                rasterize_mode=self.config.rasterize_mode,
                absgrad=self.strategy.absgrad,
                return_info=self.training and not self.frozen,
            )
        if self.training and not self.frozen:
            self.info = out.info
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
        rgb = out.colors.clamp(0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        depth = None
        if with_depth:
            depth = torch.where(out.alpha > 0, out.depth, out.depth.detach().max()).squeeze(0)
        if not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": out.alpha.squeeze(0), "background": background}

    def render_sh_degree(self) -> int:
        """SH degree rendered at this step: splatfacto's schedule, never below the initial Gaussians' degree."""
        return max(min(self.step // self.config.sh_degree_interval, self.config.sh_degree), self.init_sh_degree)

    def _gaussians_in_crop(self) -> Gaussians | None:
        """Activated Gaussians for rendering (a differentiable view of the parameters), cut to the viewer's crop
        box at evaluation; None when the crop leaves nothing."""
        g = self.gaussians()
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(g.means).squeeze()
            if not keep.any():
                return None
            g = g[keep]
        return g

    # ----------------------------------------------------------------------------------------------
    # Losses, metrics, training schedule

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict:
        if self.frozen:
            # The trainer always calls backward: a constant with no path to the parameters leaves their gradients
            # unset, so the optimisers skip them and the Gaussians stay exactly as they are.
            return {"main_loss": torch.zeros((), device=self.device, requires_grad=True)}
        return super().get_loss_dict(outputs, batch, metrics_dict)

    def step_post_backward(self, step):
        # gsplat's DefaultStrategy resets opacities whenever step % reset_every == 0, step 0 included: every
        # opacity is clamped to 2 x cull_alpha_thresh (0.2). A no-op for splatfacto's 0.1 start, but it would
        # wipe out the feed-forward opacities before the first real step; the periodic resets later stay.
        if not self.frozen and step > 0:
            super().step_post_backward(step)

    def get_image_metrics_and_images(self, outputs, batch):
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if math.isnan(metrics.get("lpips", 0.0)):
            del metrics["lpips"]  # no LPIPS weights on this machine: report the metric as absent, not NaN
        metrics.update(batch.get(ALIGNMENT_KEY, {}))  # the eval view's pose alignment (pipeline), if it had one
        return metrics, images

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if self.config.refine_steps is not None and trainer is not None:
            last = max(self.config.refine_steps, 1)  # the trainer always runs one step

            def stop_after_refinement(step: int) -> None:
                if step + 1 >= last:
                    trainer.stop_training = True

            callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], stop_after_refinement))
        return callbacks
