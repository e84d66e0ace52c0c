"""Training configuration: typed dataclasses, named presets shipped in ``da3_splat/configs/*.json``, every field
overridable on the command line (``da3-splat train tiny-synthetic --optim.lr 3e-4``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat.errors import InputError
from da3_splat.runtime import CONFIG_DIR


@dataclass
class ModelSpec:
    weights: str = "random:da3-small"
    """Start from: Hugging Face repo id, folder, .safetensors file, random:CONFIG, or arch:JSON (a DA3Config as JSON,
    randomly initialised; how the tiny model is defined)."""
    init: Literal["torch", "vit"] = "torch"
    """Random starts (random:/arch: weights): PyTorch's default initialisation, or the ViT one (DINOv2's: truncated
    normal 0.02 for the transformer's linear layers and position embedding, zero biases, tokens near 0)."""
    nvs_features: int | None = None
    """Width of the NVS head added when the weights have none (default: the geometry head's width)."""
    sh_degree: int = 1
    """SH degree of the NVS head added when the weights have none."""
    rgb_shortcut: bool = False
    """The added NVS head predicts colour as a residual on the input pixel's colour (on da3-tiny-synthetic it
    converged in fewer steps but ended 0.3 dB lower: benchmarks/results/nvs_tiny_rgb_shortcut.md)."""
    plane_sweep: bool = False
    """The added NVS head starts from a plane sweep around the predicted depth and reads its costs
    (``photometric.plane_sweep``): multi-view matching that the frozen depth head does not do."""
    model_name: str | None = None
    """Name saved with the trained weights (default: the starting model's)."""
    posed_depth_calibration: str | None = None
    """Set the model's posed depth calibration (depth rescaled to the known cameras before the Gaussians are placed):
    cameras (the given over the predicted baselines), photometric (consistency between the views), cameras+photometric
    or none; saved with the weights. None keeps the starting model's setting."""
    pose_solver: Literal["decoder", "matches"] | None = None
    """Where the model's pose-free cameras come from at inference and validation (training supervises the decoder
    either way): the camera decoder, or its patch matches lifted with its depth (``model.match_pose``; pair it with
    --loss.matching); saved with the weights. None keeps the starting model's setting."""


@dataclass
class DataSpec:
    train: tuple[Path, ...] = ()
    """Training scenes: scene folders or folders of scenes (DL3DV-10K / Benchmark layouts, synthetic)."""
    val: tuple[Path, ...] = ()
    """Held-out scenes for the periodic evaluation."""
    downscale: int | None = 4
    """Read images_N (intrinsics rescaled); None picks the first folder present."""
    height: int = 126
    """Training image height (multiple of 14)."""
    width: int = 224
    """Training image width (multiple of 14)."""
    context_views: tuple[int, int] = (2, 6)
    """Range (inclusive) of context views per sample."""
    target_views: int = 2
    """Target views per sample."""
    window: tuple[int, int] = (16, 128)
    """Range of the frame window a sample's views are drawn from (context spans the window)."""
    workers: int = 1
    """DataLoader workers (0: load in the training process)."""
    val_scenes: int = 8
    """Held-out scenes used for the periodic evaluation (the rest are for `da3-splat eval`)."""


@dataclass
class OptimSpec:
    lr: float = 2e-4
    weight_decay: float = 0.05
    warmup: int = 100
    """Linear warm-up steps, then cosine decay to 1% of lr."""
    clip: float = 1.0
    """Gradient-norm clip (0: off)."""
    batch_size: int = 1
    """Samples per step per process (global batch = batch_size x processes)."""


@dataclass
class GeometryTerms:
    """Weights of the DA3 geometry terms within ``--loss.geometry`` (0 leaves one out)."""

    depth: float = 1.0
    gradient: float = 1.0
    ray: float = 1.0
    point: float = 1.0
    camera: float = 1.0


@dataclass
class LossSpec:
    ssim: float = 0.2
    """Weight of (1 - SSIM) next to MSE on target views."""
    lpips: float = 0.0
    """Weight of LPIPS, used only when its weights are on disk (the run says whether it was)."""
    depth: float = 0.05
    """NVS head: Gaussian depth vs the frozen geometry's depth (keeps the head's depth offsets honest)."""
    gt_depth: float = 0.0
    """NVS head: Gaussian depth vs the ground-truth depth, where the data has it (synthetic scenes): teaches the
    head's depth offset where to trust a plane sweep. Log-L1 in the context cameras."""
    geometry: float = 1.0
    """Weight of the DA3 depth-ray losses when geometry is trained."""
    terms: GeometryTerms = field(default_factory=GeometryTerms)
    matching: float = 0.0
    """Geometry training: weight of the cross-view matching term on the backbone's first out-layer patch features
    (``train.matching``; a training-time auxiliary that teaches views to find each other)."""


@dataclass
class TrainConfig:
    """Train DA3's novel-view-synthesis head (and optionally its geometry) on DL3DV-style scenes.

    Run on many GPUs with `torchrun --nproc-per-node N -m da3_splat.cli train ...`."""

    preset: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="PRESET")] = None
    """A named config from configs/ (tiny-synthetic, small, base, large, giant) or a .json file; fields given
    on the command line override it."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("outputs/train")
    """Run folder: checkpoints, TensorBoard logs, the final model."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    train: Literal["nvs", "nvs+heads", "geometry", "geometry+nvs", "all"] = "nvs"
    """What learns: the NVS head alone (backbone frozen, the default), also the depth/ray/camera heads, the
    geometry alone (backbone + heads, DA3 depth-ray losses), geometry and NVS head, or the whole model."""
    posed: float = 1.0
    """Fraction of samples on which DA3 gets the context cameras (the rest are pose-free)."""
    reference_view: Literal["first", "random", "saddle_balanced"] = "first"
    """Pose-free samples: the view whose camera is the predicted world frame. first: the first context view (a fixed
    frame per sample, which small models learn fastest), random: a uniformly drawn view (moved to the front, as DA3
    moves its reference), saddle_balanced: DA3's own rule (it follows the features, so a sample's frame changes as
    training goes). Geometry training saves the rule as the model's inference default (config.ref_view_strategy;
    random saves first)."""
    steps: int = 1000
    """Optimisation steps (the cosine schedule ends here)."""
    seed: int = 0
    """Seeds the data order, the view sampling and the initialisation of new weights."""
    bf16: bool = True
    """bf16 autocast for the backbone on CUDA (CPU always runs fp32)."""
    grad_checkpointing: bool = False
    """Recompute backbone blocks in the backward pass (less memory, ~30% slower)."""
    log_every: int = 20
    """Scalars to metrics.jsonl and TensorBoard every N steps."""
    eval_every: int = 250
    """Held-out validation (--data.val, posed: NVS PSNR/SSIM, depth AbsRel) every N steps and at the end."""
    checkpoint_every: int = 250
    """Checkpoint (safetensors + JSON run state, written atomically) every N steps."""
    keep_checkpoints: int = 3
    """Checkpoints kept in OUTPUT/checkpoints (older ones are deleted)."""
    images_every: int = 250
    """TensorBoard image grids (context | target | render) every N steps."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much wall time."""
    resume: bool = False
    """Continue the run in --output from its latest checkpoint (same data order and optimizer state)."""
    overwrite: bool = False
    """Start afresh in an --output that already holds a run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (torchrun: one GPU per process), else CPU."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""


def preset_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".json":
        if not p.is_file():
            raise InputError(f"config file {p} not found")
        return p
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.json"))
        raise InputError(f"unknown config {name!r}; choose one of {', '.join(known)} or pass a .json file")
    return path


def _merge(obj, data: dict, where: str):
    """Dataclass ``obj`` with the fields in ``data`` replaced (recursively); unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"{where}: unknown field {key!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{where}.{key}")
        elif isinstance(current, tuple) or (key in ("train", "val") and isinstance(value, list)):
            changes[key] = tuple(Path(v) if key in ("train", "val") else v for v in value)
        elif isinstance(current, Path):
            changes[key] = Path(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def load_preset(name: str) -> TrainConfig:
    path = preset_path(name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    data.pop("description", None)
    return _merge(TrainConfig(preset=name), data, path.name)


def config_to_dict(cfg: TrainConfig) -> dict:
    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def parse_train_args(argv: list[str]) -> TrainConfig:
    """Two passes: find the preset (first positional), then let tyro parse overrides with it as the default."""
    preset = argv[0] if argv and not argv[0].startswith("-") else None
    default = load_preset(preset) if preset else TrainConfig()
    return tyro.cli(TrainConfig, default=default, args=argv, prog="da3-splat train")
