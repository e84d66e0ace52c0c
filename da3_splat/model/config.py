"""Architecture configs of every DA3 model, as typed dataclasses.

The official checkpoints name their architecture with ``model_name`` in ``config.json``; ``CONFIGS`` maps each
name to its architecture. Extra (non-official) configs such as the small model trained by this project are
registered the same way, so one loader serves all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from da3_splat.photometric import SWEEP_CHANNELS


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    dim: int = 384
    depth: int = 12
    num_heads: int = 6
    ffn: str = "mlp"  # "mlp" (fc1 -> GELU -> fc2) or "swiglu" (w12 -> silu-gate -> w3)
    ffn_hidden: int = 1536
    out_layers: tuple[int, ...] = (5, 7, 9, 11)
    # Blocks >= alt_start alternate local (even) / global (odd) attention; qk-norm and RoPE start there too.
    # -1 disables all three (metric and mono models).
    alt_start: int = 4
    cat_token: bool = True  # heads get cat(local, norm(global)) features and a camera token
    patch_size: int = 14
    pos_grid: int = 37  # pos-embed table is 1 + pos_grid**2 entries (518 / 14)
    rope_base: float = 100.0


@dataclass(frozen=True, kw_only=True)
class DPTConfig:
    kind: str = "dual"  # "dual" (depth + rays), "mono" (depth [+ sky]), "gs" (38 Gaussian channels)
    features: int = 64
    out_channels: tuple[int, int, int, int] = (48, 96, 192, 384)
    output_dim: int = 2
    sky: bool = False
    pos_embed: bool = True
    extra_inputs: int = 0  # GS head: channels given beside the RGB image (da3-splat's plane-sweep features)


@dataclass(frozen=True, kw_only=True)
class GSHeadConfig:
    """The GS head: its DPT network and how its raw channels become Gaussians (``model/gs_adapter.py``)."""

    dpt: DPTConfig
    sh_degree: int = 2
    planar_depth: bool = False  # adapter reads depth as z-depth (da3-splat NVS heads) or as ray distance (official)
    # Largest Gaussian std in units of 0.1 pixel footprint (the official adapter's 30, i.e. 3 px). da3-splat NVS heads
    # use NVS_SCALE_MAX (1 px): their Gaussians are one per pixel of the input, and the CPU renderer's cost grows
    # with each splat's area, so a head free to reach 3 px splats makes training steps several times dearer.
    scale_max: float = 30.0
    # Optionally, an NVS head's colour is a residual on the input pixel's colour (the official head predicts it
    # outright); a small head then need not learn the texture, though on da3-tiny-synthetic it did not help.
    rgb_shortcut: bool = False
    # The depth-offset channel: added to the depth (official adapter) or, for da3-splat NVS heads, a log factor on
    # it (depth * exp(offset)), so one head corrects depth alike at any scene scale.
    log_depth_offset: bool = False
    # da3-splat NVS heads can start from a plane sweep around the predicted depth (photometric.plane_sweep, in the
    # cameras the Gaussians are placed with): the Gaussians sit at the swept depth, times the head's log-factor
    # offset, and the head reads the sweep's factor and costs beside the image to judge where to trust it.
    plane_sweep: bool = False

    @staticmethod
    def from_dict(d: dict, flat: dict | None = None) -> GSHeadConfig:
        """From ``to_dict``'s form ({"dpt": {...}, "sh_degree": ...}) or, for config.json files written before
        this sub-config existed, from the DPT fields with the settings given ``flat`` (``gs_sh_degree``, ...)."""
        names = {f.name for f in fields(GSHeadConfig)} - {"dpt"}
        if "dpt" in d:
            return GSHeadConfig(dpt=DPTConfig(**_tuples(d["dpt"], DPTConfig)), **{k: d[k] for k in names & d.keys()})
        settings = {k[3:]: v for k, v in (flat or {}).items() if k.startswith("gs_") and k[3:] in names}
        return GSHeadConfig(dpt=DPTConfig(**_tuples(d, DPTConfig)), **settings)


POSE_SOLVERS = ("decoder", "matches")


@dataclass(frozen=True, kw_only=True)
class DA3Config:
    model_name: str
    vit: ViTConfig = field(default_factory=ViTConfig)
    head: DPTConfig = field(default_factory=DPTConfig)
    camera: bool = True  # camera encoder (pose conditioning) + camera decoder
    # Layer-normalise (no affine) the camera token before the camera decoder's ReLU MLP; the official models feed
    # it raw. Tried against the collapse of cameras trained from scratch (most decoder ReLUs die, every view gets the
    # same camera); it does not prevent it (benchmarks/results/camera_collapse.md).
    camera_token_norm: bool = False
    # Where pose-free cameras come from at inference (eval mode, no given cameras): "decoder", the official camera
    # decoder; "matches", the model's own cross-view patch matches lifted with its depth and fitted per view
    # (:mod:`da3_splat.model.match_pose`), for models trained with the matching term whose decoder collapsed.
    # While the camera decoder trains (train mode) it gives the cameras; ``use_ray_pose`` still selects the ray solver.
    pose_solver: str = "decoder"
    gs_head: GSHeadConfig | None = None  # the Gaussian head and its adapter settings (official giant; NVS heads)
    # Longest image side the model sees unless told otherwise (infer's default): the official models' 504, the
    # training resolution for models trained with da3-splat (a small model trained at 224 px misjudges depth at 504).
    process_res: int = 504
    # With known cameras (``gs_cameras``), rescale the predicted depth to them before placing Gaussians:
    # "cameras": by the ratio of the given cameras' baselines to the model's own predicted ones
    # (geometry.baseline_scale; for models trained with the scale-normalised geometry losses, whose depth and cameras
    # share one free scale);
    # "photometric" (or true): by photometric consistency between the views (photometric.photometric_depth_scale;
    # the first da3-tiny-synthetic weights, trained in the camera-normalised frame, were off by a median x1.77);
    # "cameras+photometric": the first, then the second around it. false / "none": off.
    posed_depth_calibration: bool | str = False
    # The reference-view rule forward/infer use when the caller names none (pose-free, S >= 3): the official models'
    # "saddle_balanced"; models trained here with ``--reference-view first`` predict in the first view's frame.
    ref_view_strategy: str = "saddle_balanced"
    # Nested model: an any-view model plus a metric model whose depth sets the scale.
    nested_metric: str | None = None
    nested_anyview: str | None = None

    def __post_init__(self):
        if self.pose_solver not in POSE_SOLVERS:
            raise ValueError(f"pose_solver: unknown {self.pose_solver!r}; use one of {', '.join(POSE_SOLVERS)}")

    @property
    def depth_calibration_steps(self) -> tuple[str, ...]:
        """``posed_depth_calibration`` as the steps to run, in order ("cameras", "photometric")."""
        value = {True: "photometric", False: "none"}.get(self.posed_depth_calibration, self.posed_depth_calibration)
        steps = tuple(s for s in str(value).split("+") if s != "none")
        unknown = set(steps) - {"cameras", "photometric"}
        if unknown:
            raise ValueError(f"posed_depth_calibration: unknown step(s) {sorted(unknown)}; use cameras, photometric")
        return steps

    @property
    def is_nested(self) -> bool:
        return self.nested_metric is not None

    @property
    def head_dim_in(self) -> int:
        return self.vit.dim * (2 if self.vit.cat_token else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DA3Config:
        d = dict(d)
        vit = ViTConfig(**_tuples(d.pop("vit", {}), ViTConfig))
        head = DPTConfig(**_tuples(d.pop("head", {}), DPTConfig))
        gs = d.pop("gs_head", None)
        gs = GSHeadConfig.from_dict(gs, flat=d) if gs else None
        known = {f.name for f in fields(DA3Config)}
        return DA3Config(vit=vit, head=head, gs_head=gs, **{k: v for k, v in d.items() if k in known})


def _tuples(d: dict, cls) -> dict:
    # JSON turns tuples into lists; frozen dataclasses want hashable tuples back.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in {f.name for f in fields(cls)}}


def _anyview(name, dim, depth, heads, ffn, hidden, out_layers, alt_start, features, oc, gs=None):
    return DA3Config(
        model_name=name,
        vit=ViTConfig(
            dim=dim,
            depth=depth,
            num_heads=heads,
            ffn=ffn,
            ffn_hidden=hidden,
            out_layers=tuple(out_layers),
            alt_start=alt_start,
            cat_token=True,
        ),
        head=DPTConfig(kind="dual", features=features, out_channels=tuple(oc), output_dim=2, sky=False, pos_embed=True),
        gs_head=gs,
    )


_LARGE_OC = (256, 512, 1024, 1024)

CONFIGS: dict[str, DA3Config] = {
    "da3-small": _anyview("da3-small", 384, 12, 6, "mlp", 1536, (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)),
    "da3-base": _anyview("da3-base", 768, 12, 12, "mlp", 3072, (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)),
    "da3-large": _anyview("da3-large", 1024, 24, 16, "mlp", 4096, (11, 15, 19, 23), 8, 256, _LARGE_OC),
    "da3-giant": _anyview(
        "da3-giant",
        1536,
        40,
        24,
        "swiglu",
        4096,
        (19, 27, 33, 39),
        13,
        256,
        _LARGE_OC,
        gs=GSHeadConfig(
            dpt=DPTConfig(kind="gs", features=256, out_channels=_LARGE_OC, output_dim=38, sky=False, pos_embed=True)
        ),
    ),
    "da3metric-large": DA3Config(
        model_name="da3metric-large",
        vit=ViTConfig(
            dim=1024,
            depth=24,
            num_heads=16,
            ffn="mlp",
            ffn_hidden=4096,
            out_layers=(4, 11, 17, 23),
            alt_start=-1,
            cat_token=False,
        ),
        head=DPTConfig(kind="mono", features=256, out_channels=_LARGE_OC, output_dim=1, sky=True, pos_embed=False),
        camera=False,
    ),
}
CONFIGS["da3mono-large"] = replace(CONFIGS["da3metric-large"], model_name="da3mono-large")
CONFIGS["da3nested-giant-large"] = DA3Config(
    model_name="da3nested-giant-large", nested_anyview="da3-giant", nested_metric="da3metric-large"
)

OFFICIAL_MODELS = tuple(CONFIGS)


def gs_head_channels(sh_degree: int) -> int:
    """GS-DPT output channels: xy offset 2, scale 3, quaternion 4, SH 3 * (d + 1)^2, depth offset 1, opacity 1."""
    return 2 + 3 + 4 + 3 * (sh_degree + 1) ** 2 + 1 + 1


NVS_SCALE_MAX = 10.0


def with_nvs_head(
    config: DA3Config,
    features: int | None = None,
    sh_degree: int = 2,
    model_name: str | None = None,
    rgb_shortcut: bool = False,
    plane_sweep: bool = False,
) -> DA3Config:
    """``config`` plus a trainable NVS head: a GS-DPT on the same backbone features, mapped through DA3's
    Gaussian adapter. ``features`` sets its width (default: the geometry head's); its per-level channels
    follow the geometry head's, scaled by the same factor, so any backbone size gets a matching head."""
    if config.is_nested:
        raise ValueError("add the NVS head to the nested model's any-view model instead")
    f = features or config.head.features
    ratio = f / config.head.features
    oc = tuple(max(8, int(round(c * ratio))) for c in config.head.out_channels)
    extra = SWEEP_CHANNELS if plane_sweep else 0
    head = DPTConfig(
        kind="gs",
        features=f,
        out_channels=oc,
        output_dim=gs_head_channels(sh_degree),
        sky=False,
        pos_embed=True,
        extra_inputs=extra,
    )
    gs = GSHeadConfig(
        dpt=head,
        sh_degree=sh_degree,
        planar_depth=True,
        scale_max=NVS_SCALE_MAX,
        log_depth_offset=True,
        rgb_shortcut=rgb_shortcut,
        plane_sweep=plane_sweep,
    )
    return replace(config, gs_head=gs, model_name=model_name or config.model_name)


def register_config(config: DA3Config) -> None:
    """Register an extra architecture (e.g. a model trained with da3-splat) under its ``model_name``."""
    CONFIGS[config.model_name] = config


def get_config(name: str) -> DA3Config:
    if name not in CONFIGS:
        raise KeyError(f"unknown DA3 model_name {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]
