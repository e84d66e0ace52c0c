"""The method ``da3-splat``, as nerfstudio's entry point names it (pyproject.toml). The dataparser ``da3-images``
is registered from ``nerfstudio_plugin.dataparser`` (see the note there).

Optimiser settings are splatfacto's, with the learning-rate schedules fitted to this method's shorter default
run (DA3's start needs fewer steps than random or SfM points)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfstudio_plugin.model import DA3SplatModelConfig
from nerfstudio_plugin.pipeline import DA3DatamanagerConfig, DA3SplatPipelineConfig

MAX_STEPS = 7000


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """nerfstudio's exponential decay, with learning rates kept as Python floats."""

    _target: type = field(default_factory=lambda: FloatExponentialDecayScheduler)


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio computes the schedule with numpy, so numpy scalars end up in the optimiser and scheduler state
    and in every checkpoint, and ``torch.load(weights_only=True)`` (torch >= 2.6's default, used by ns-eval,
    ns-export and ns-viewer) refuses to load them. Same values, as floats."""

    def get_scheduler(self, optimizer, lr_init: float):
        scheduler = super().get_scheduler(optimizer, lr_init)
        scheduler.lr_lambdas = [lambda step, f=f: float(f(step)) for f in scheduler.lr_lambdas]
        for group in optimizer.param_groups:  # already set once by the numpy schedule
            group["lr"] = float(group["lr"])
        scheduler._last_lr = [float(lr) for lr in scheduler._last_lr]
        return scheduler


def optimizers(max_steps: int = MAX_STEPS) -> dict:
    """One Adam per splatfacto parameter group (every group the model returns needs an entry)."""

    def adam(lr: float, scheduler=None) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}

    def warm_decay(lr_final: float) -> FloatExponentialDecaySchedulerConfig:
        return FloatExponentialDecaySchedulerConfig(
            lr_final=lr_final, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
        )

    return {
        "means": adam(1.6e-4, FloatExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps)),
        "features_dc": adam(0.0025),
        "features_rest": adam(0.0025 / 20),
        "opacities": adam(0.05),
        "scales": adam(0.005),
        "quats": adam(0.001),
        "camera_opt": adam(1e-4, warm_decay(5e-7)),  # on by default for da3-images (camera_refinement)
        "bilateral_grid": adam(2e-3, warm_decay(1e-4)),  # only used with --pipeline.model.use-bilateral-grid
    }


da3_splat_method = MethodSpecification(
    config=TrainerConfig(
        method_name="da3-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=MAX_STEPS,
        mixed_precision=False,
        pipeline=DA3SplatPipelineConfig(
            # Posed data: nerfstudio-data (any dataparser works); unposed photos or video: da3-images.
            datamanager=DA3DatamanagerConfig(dataparser=NerfstudioDataParserConfig(load_3D_points=False)),
            model=DA3SplatModelConfig(),
        ),
        optimizers=optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Gaussian splatting started from Depth Anything 3's feed-forward Gaussians (da3-splat)",
)
