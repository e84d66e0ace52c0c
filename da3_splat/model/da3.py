"""The DA3 network: backbone + heads + camera encoder/decoder (+ GS head), and the nested metric model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from da3_splat.model.camera import CameraDecoder, CameraEncoder
from da3_splat.model.config import DA3Config, get_config
from da3_splat.model.dpt import HEAD_CHUNK, DPTHead
from da3_splat.model.output import DA3Output
from da3_splat.model.vit import DinoViT

SKY_THRESHOLD = 0.3  # metric sky head: values below are non-sky
QUANTILE_SAMPLES = 100_000  # torch.quantile limit; DA3 subsamples larger sets
NESTED_SKY_DEPTH_CAP = 200.0


def _fp32(device_type: str):
    """Heads, camera modules and pose solvers always run in fp32, even inside an autocast region."""
    return torch.autocast(device_type=device_type, enabled=False)


def _subsample(values: Tensor, n: int, use_randperm: bool) -> Tensor:
    if values.numel() <= n:
        return values
    if use_randperm:
        return values.flatten()[torch.randperm(values.numel(), device=values.device)[:n]]
    return values[torch.randint(0, values.numel(), (n,), device=values.device)]


class DA3(nn.Module):
    """Depth Anything 3, any configuration. See :meth:`forward` for the network call and
    :meth:`infer` (``da3_splat.model.inference``) for images in, numpy out. A nested configuration builds a
    :class:`NestedDA3` (``DA3(config)`` and the loaders pick the class from the configuration)."""

    def __new__(cls, config: DA3Config | None = None, *args, **kwargs):
        if cls is DA3 and config is not None and config.is_nested:
            cls = NestedDA3
        return super().__new__(cls)

    def __init__(self, config: DA3Config, head_chunk: int = HEAD_CHUNK):
        super().__init__()
        self.config = config
        self.backbone = DinoViT(config.vit)
        self.head = DPTHead(config.head, config.head_dim_in, head_chunk)
        if config.camera:
            self.cam_enc = CameraEncoder(config.vit.dim)
            self.cam_dec = CameraDecoder(config.head_dim_in, config.camera_token_norm)
        if config.gs_head is not None:
            self.gs_head = DPTHead(config.gs_head.dpt, config.head_dim_in, head_chunk)

    # -- construction / weights (implemented in weights.py, exposed here as the public API) ---------------
    @classmethod
    def from_config(cls, name: str | DA3Config, **kw) -> DA3:
        """A randomly initialised model of an official (or registered) configuration."""
        return cls(get_config(name) if isinstance(name, str) else name, **kw).eval()

    @classmethod
    def from_pretrained(cls, src: str, **kw) -> DA3:
        """Load weights from a Hugging Face repo id, a folder with config.json + model.safetensors, or a
        .safetensors file (safetensors only; keys checked strictly)."""
        from da3_splat.model.weights import load_pretrained

        return load_pretrained(cls, src, **kw)

    def save_pretrained(self, directory, overwrite: bool = False):
        from da3_splat.model.weights import save_pretrained

        return save_pretrained(self, directory, overwrite=overwrite)

    def infer(self, images, **kw):
        from da3_splat.model.inference import infer

        return infer(self, images, **kw)

    def add_nvs_head(
        self, features: int | None = None, sh_degree: int = 2, rgb_shortcut: bool = False, plane_sweep: bool = False
    ) -> DA3:
        """Attach a freshly initialised NVS head (GS-DPT, see ``config.with_nvs_head``) in place; returns self."""
        from da3_splat.model.config import with_nvs_head

        self.config = with_nvs_head(
            self.config, features, sh_degree, rgb_shortcut=rgb_shortcut, plane_sweep=plane_sweep
        )
        p = next(self.parameters())
        self.gs_head = DPTHead(self.config.gs_head.dpt, self.config.head_dim_in, self.head.chunk).to(p)
        return self

    def compile_parts(self, **compile_kw) -> DA3:
        """Opt-in ``torch.compile`` of the backbone and of the heads' per-chunk pass, in place; returns self.

        The first forward at each input shape compiles (about 30-45 s for da3-small on 2 CPU cores); later ones
        fuse the elementwise work between the GEMMs. On 2 CPU cores that moved the forward by at most 10% either way,
        within 5e-6 of eager (``benchmarks/results/forward_ceiling.md``); the GEMMs and attention, most of the time,
        are the same kernels. The Python around them (reference views, cameras) stays eager."""
        compile_kw.setdefault("dynamic", False)
        # Block by block: the backbone's loop breaks the graph where it selects the reference view (a data-dependent
        # index), which would send the whole loop back to eager. The blocks share one code object, compiled once
        # per variant (with or without RoPE/qk-norm, per-view or all-view tokens) and input shape, so the default
        # limit of 8 recompilations is raised for callers that run several view counts.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for block in self.backbone.blocks:
            block.compile(**compile_kw)
        for head in (self.head, getattr(self, "gs_head", None)):
            if head is not None:
                head._forward_frames = torch.compile(head._forward_frames, **compile_kw)
        return self

    def process_res_for(self, requested: int | None) -> int:
        """Longest image side to run at: ``requested``, else the model's own (``config.process_res``)."""
        return requested or self.config.process_res

    @property
    def has_gs_head(self) -> bool:
        return self.config.gs_head is not None

    @property
    def has_cameras(self) -> bool:
        return self.config.camera

    # -- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        extrinsics: Tensor | None = None,
        intrinsics: Tensor | None = None,
        *,
        ref_view_strategy: str | None = None,
        use_ray_pose: bool = False,
        infer_gs: bool = False,
        return_rays: bool = True,
        gs_cameras: tuple[Tensor, Tensor] | None = None,
        keep_features: bool = False,
    ) -> DA3Output:
        """x: (B, S, 3, H, W) ImageNet-normalised, H and W multiples of 14; returns a :class:`DA3Output`.

        extrinsics (B, S, 3|4, 4) world-to-camera OpenCV, already normalised (``normalize_extrinsics``), and
        intrinsics (B, S, 3, 3) in pixels of ``x``: condition the backbone on known cameras.
        ``ref_view_strategy`` (default ``config.ref_view_strategy``) selects the reference view for S >= 3
        pose-free views. ``return_rays=False`` skips the ray branch (about half of the head's cost) unless
        ``use_ray_pose`` (cameras from the rays instead of the camera decoder) needs it; the official net computes
        it and then discards it. ``infer_gs``: the GS head's Gaussians, placed with the predicted cameras (the
        official model's behaviour) or, given ``gs_cameras`` (w2c (B, S, 3|4, 4), K (B, S, 3, 3)), with those
        (known poses; with ``config.posed_depth_calibration`` the depth is first rescaled to them). That code is
        the NVS head's (:mod:`da3_splat.model.nvs_head`); it runs here so that a DDP wrapper sees the whole
        pass. ``keep_features`` keeps the backbone features in the output.
        """
        if x.dim() != 5:
            raise ValueError(f"expected images of shape (B, S, 3, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        dev = x.device.type
        cam_token = None
        if extrinsics is not None:
            if not self.config.camera:
                raise ValueError(f"{self.config.model_name} takes no camera conditioning")
            if intrinsics is None:
                raise ValueError("pose conditioning needs intrinsics together with extrinsics")
            with _fp32(dev):
                cam_token = self.cam_enc(extrinsics, intrinsics, H, W)
        feats, order = self.backbone(x, cam_token, ref_view_strategy or self.config.ref_view_strategy)
        with _fp32(dev):
            patch = [f.float() for f, _ in feats]
            head = self.head(patch, H, W, rays=return_rays or use_ray_pose)
            # The view whose camera is the predicted world frame (the selected reference; 0 when none was selected).
            ref = order[:, 0] if order is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            out = DA3Output(reference_view=ref, **head)
            if self.config.camera:
                if use_ray_pose:
                    from da3_splat.model.ray_pose import cameras_from_rays

                    out.extrinsics, out.intrinsics = cameras_from_rays(out.ray, out.ray_conf, H, W)
                else:
                    out.extrinsics, out.intrinsics = self.cam_dec.cameras(feats[-1][1].float(), H, W)
                    # While the decoder trains (its module in train mode), the losses need its own cameras. Posed,
                    # the model's cameras only serve the "cameras" calibration step (their baselines against the
                    # given ones), so the match cameras, in the depth's own units, serve it there too.
                    calibrates = gs_cameras is not None and "cameras" in self.config.depth_calibration_steps
                    if (
                        self.config.pose_solver == "matches"
                        and (extrinsics is None or calibrates)
                        and not self.cam_dec.training
                    ):
                        self._cameras_from_matches(out, patch[0])
        out.features = patch
        if gs_cameras is not None:
            from da3_splat.model.nvs_head import place_with_given_cameras

            place_with_given_cameras(self, out, x, *gs_cameras, gaussians=infer_gs)
        elif infer_gs and self.config.gs_head is not None:
            from da3_splat.model.nvs_head import predict_gaussians

            out.gaussians = predict_gaussians(self, out, x, gt_extrinsics=extrinsics)
        if not keep_features:
            out.features = None
        if out.sky is not None:
            out.depth = self._fill_sky(out.depth, out.sky < SKY_THRESHOLD, None)[0]
        return out

    @staticmethod
    def _cameras_from_matches(out: DA3Output, features: Tensor) -> None:
        """The model's own cameras (pose-free, or for a posed pass's "cameras" calibration) from the first output
        layer's patch matches (the layer the matching term trains) and the predicted depth, which is brought into
        the reference view's units; the decoder's intrinsics stay."""
        from da3_splat.model.match_pose import cameras_from_matches

        solved = cameras_from_matches(features, out.depth, out.intrinsics, out.reference_view)
        # A view no match reaches keeps the decoder's camera rather than the reference's pose: coincident cameras
        # break every consumer that normalises by the spread of the centres (nerfstudio, chunk alignment).
        S = solved.extrinsics.shape[1]
        views = torch.arange(S, device=solved.extrinsics.device)
        unplaced = (solved.inliers.to(views.device) == 0) & (views != out.reference_view[:, None].to(views.device))
        decoder = out.extrinsics[..., :3, :].to(solved.extrinsics)
        out.extrinsics = torch.where(unplaced[..., None, None], decoder, solved.extrinsics)
        out.depth = out.depth / solved.depth_scale[..., None, None]

    @staticmethod
    def _fill_sky(depth: Tensor, non_sky: Tensor, cap: float | None, conf: Tensor | None = None):
        """Set sky pixels to the 0.99 quantile of non-sky depth (DA3's convention)."""
        n_non_sky = int(non_sky.sum())
        if n_non_sky <= 10 or non_sky.numel() - n_non_sky <= 10:
            if cap is None:  # single models skip; the nested model always fills
                return depth, conf
        far = torch.quantile(_subsample(depth[non_sky], QUANTILE_SAMPLES, use_randperm=False), 0.99)
        if cap is not None:
            far = torch.clamp(far, max=cap)
        depth = torch.where(non_sky, depth, far)
        if conf is not None:
            conf = torch.where(non_sky, conf, torch.ones_like(conf))
        return depth, conf


class NestedDA3(DA3):
    """DA3's nested model: an any-view model composed with a metric model whose depth sets the scale."""

    def __init__(self, config: DA3Config, head_chunk: int = HEAD_CHUNK):
        nn.Module.__init__(self)
        self.config = config
        self.anyview = DA3(get_config(config.nested_anyview), head_chunk)
        self.metric = DA3(get_config(config.nested_metric), head_chunk)

    @property
    def has_gs_head(self) -> bool:
        return self.anyview.has_gs_head

    @property
    def has_cameras(self) -> bool:
        return self.anyview.has_cameras

    def forward(
        self,
        x: Tensor,
        extrinsics: Tensor | None = None,
        intrinsics: Tensor | None = None,
        *,
        gs_cameras: tuple[Tensor, Tensor] | None = None,
        keep_features: bool = False,
        **options,
    ) -> DA3Output:
        """The any-view pass (:meth:`DA3.forward`, ``options`` are its flags), its depth and camera translations
        scaled to metres by the metric model's depth (``scale_factor``) and its sky filled. The Gaussians come
        from the any-view pass, before the metric alignment, placed with its predicted cameras (as in the
        official model); ``gs_cameras`` and ``keep_features`` are not used."""
        out = self.anyview(x, extrinsics, intrinsics, **options)
        metric = self.metric(x)
        with _fp32(x.device.type):
            K = out.intrinsics
            focal = (K[..., 0, 0] + K[..., 1, 1]) / 2
            metric_depth = metric.depth * (focal[..., None, None] / 300.0)
            non_sky = metric.sky < SKY_THRESHOLD
            if int(non_sky.sum()) <= 10:
                raise ValueError("nested DA3: fewer than 11 non-sky pixels, cannot align to metric depth")
            conf_ns = _subsample(out.depth_conf[non_sky], QUANTILE_SAMPLES, use_randperm=True)
            median_conf = torch.quantile(conf_ns, 0.5)
            mask = (out.depth_conf >= median_conf) & non_sky & (metric_depth > 1e-2) & (out.depth > 1e-3)
            d, m = out.depth[mask], metric_depth[mask]
            scale = (m * d).sum() / (d * d).sum().clamp(min=1e-12)
            out.depth = out.depth * scale
            ext = out.extrinsics.clone()
            ext[..., :3, 3] = ext[..., :3, 3] * scale
            out.extrinsics = ext
            out.scale_factor = scale
            out.depth, out.depth_conf = self._fill_sky(out.depth, non_sky, NESTED_SKY_DEPTH_CAP, out.depth_conf)
        return out
