"""DPT heads: Dual-DPT (depth + rays), DPT (metric/mono depth + sky) and GS-DPT (Gaussian parameters).

All three share the same reassemble + RefineNet fusion; they differ in the token norm, the UV position
embedding and their output convolutions. Frames are processed in chunks along B*S so that head memory grows
linearly with the number of views. Names follow the official checkpoint (``scratch.refinenet1.resConfUnit1``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3_splat.model.config import DPTConfig

# Frames per head chunk. Head activations at 4x the patch grid dominate peak memory, and small chunks are no slower
# on CPU (da3-base, 8 views, 280x504 with rays: chunks of 8 frames 1181 MB and 15.3 s, of 2 frames 647 MB and 14.1 s).
HEAD_CHUNK = 2


def resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


@functools.lru_cache(maxsize=64)
def _uv_embedding(channels: int, hf: int, wf: int, aspect: float, device: torch.device) -> Tensor:
    """Sinusoidal embedding of a centred UV grid whose diagonal has length 2 (aspect = W / H of the network
    input, not of the feature map). Returns 0.1 * embedding, (channels, hf, wf)."""
    diag = math.sqrt(aspect**2 + 1)
    sx, sy = aspect / diag, 1 / diag
    xs = torch.linspace(-sx * (wf - 1) / wf, sx * (wf - 1) / wf, wf, device=device)
    ys = torch.linspace(-sy * (hf - 1) / hf, sy * (hf - 1) / hf, hf, device=device)
    q = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(q, dtype=torch.float32, device=device) / q)

    def sincos(p: Tensor) -> Tensor:
        a = p[:, None] * omega
        return torch.cat([a.sin(), a.cos()], dim=-1)

    ex = sincos(xs)[None, :, :].expand(hf, wf, 2 * q)
    ey = sincos(ys)[:, None, :].expand(hf, wf, 2 * q)
    return 0.1 * torch.cat([ex, ey], dim=-1).permute(2, 0, 1).contiguous()


def add_uv_embedding(x: Tensor, aspect: float) -> Tensor:
    C, h, w = x.shape[-3:]
    return x + _uv_embedding(C, h, w, aspect, x.device).to(x.dtype)


class ResidualConvUnit(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.conv1 = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # In place on the convolutions' fresh outputs (autograd-safe): same values, two fewer full-size maps.
        return self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True)).add_(x)


class FusionBlock(nn.Module):
    def __init__(self, f: int, lateral: bool = True):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(f) if lateral else None
        self.resConfUnit2 = ResidualConvUnit(f)
        self.out_conv = nn.Conv2d(f, f, 1)

    def forward(self, top: Tensor, lateral: Tensor | None, size) -> Tensor:
        y = top if lateral is None else top + self.resConfUnit1(lateral)
        return self.out_conv(resize(self.resConfUnit2(y), size))


def fusion_chain(f: int) -> dict[str, FusionBlock]:
    return {
        "refinenet1": FusionBlock(f),
        "refinenet2": FusionBlock(f),
        "refinenet3": FusionBlock(f),
        "refinenet4": FusionBlock(f, lateral=False),
    }


def fuse(scratch: nn.Module, layers: list[Tensor], suffix: str = "") -> Tensor:
    """Top-down RefineNet fusion; returns the finest map at twice the resolution of layers[0]."""
    l1, l2, l3, l4 = layers
    r = lambda i: getattr(scratch, f"refinenet{i}{suffix}")  # noqa: E731
    y = r(4)(l4, None, l3.shape[-2:])
    y = r(3)(y, l3, l2.shape[-2:])
    y = r(2)(y, l2, l1.shape[-2:])
    return r(1)(y, l1, [2 * s for s in l1.shape[-2:]])


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (the ray branch normalises its 32 channels)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-5).permute(0, 3, 1, 2)


def _head(cin: int, cout: int, mid: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, cout, 1))


class DPTHead(nn.Module):
    def __init__(self, cfg: DPTConfig, dim_in: int, chunk: int = HEAD_CHUNK):
        super().__init__()
        self.cfg = cfg
        self.chunk = chunk
        F_, oc = cfg.features, cfg.out_channels
        self.norm = nn.LayerNorm(dim_in, eps=1e-5) if cfg.kind == "dual" else nn.Identity()
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),
            ]
        )
        s = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(s, f"layer{i}_rn", nn.Conv2d(c, F_, 3, padding=1, bias=False))
        for name, block in fusion_chain(F_).items():
            setattr(s, name, block)
        s.output_conv1 = nn.Conv2d(F_, F_ // 2, 3, padding=1)
        s.output_conv2 = _head(F_ // 2, cfg.output_dim)
        if cfg.kind == "dual":
            for name, block in fusion_chain(F_).items():
                setattr(s, name + "_aux", block)
            half = F_ // 2
            s.output_conv1_aux = nn.ModuleList(
                nn.Sequential(*(nn.Conv2d(a, b, 3, padding=1) for a, b in [(F_, half), (half, F_)] * 2 + [(F_, half)]))
                for _ in range(4)
            )
            # The official model shares one LayerNorm between the four ray levels; keep the sharing so
            # state_dict keys and file de-duplication behave exactly like the checkpoints.
            ln = ChannelsLastLayerNorm(32)
            s.output_conv2_aux = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(half, 32, 3, padding=1), nn.Identity(), ln, nn.Identity(), nn.ReLU(), nn.Conv2d(32, 7, 1)
                )
                for _ in range(4)
            )
        if cfg.sky:
            s.sky_output_conv2 = _head(F_ // 2, 1)
        self.scratch = s
        if cfg.kind == "gs":
            self.images_merger = nn.Sequential(
                nn.Conv2d(3 + cfg.extra_inputs, 32, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(64, F_ // 2, 3, padding=1),
                nn.GELU(),
            )

    def forward(
        self, feats: list[Tensor], H: int, W: int, images: Tensor | None = None, rays: bool = True
    ) -> dict[str, Tensor]:
        """feats: 4 tensors (B, S, P, dim_in); images (B, S, 3, H, W) normalised (GS head only); rays: compute
        the Dual-DPT ray branch (half the head's work). Returns tensors with leading (B, S)."""
        B, S = feats[0].shape[:2]
        n = B * S
        flat = [f.flatten(0, 1) for f in feats]
        imgs = images.flatten(0, 1) if images is not None else None
        chunks = []
        for a in range(0, n, self.chunk):
            b = min(a + self.chunk, n)
            frames = [f[a:b] for f in flat]
            chunks.append(self._forward_frames(frames, H, W, None if imgs is None else imgs[a:b], rays))
        return {k: torch.cat([c[k] for c in chunks]).unflatten(0, (B, S)) for k in chunks[0]}

    def _forward_frames(self, feats: list[Tensor], H: int, W: int, images: Tensor | None, rays: bool):
        p = 14
        h, w = H // p, W // p
        aspect = W / H
        layers = []
        for k, f in enumerate(feats):
            # (n, P, C) tokens viewed as an NCHW map in channels-last memory: no copy, and every convolution
            # below runs in oneDNN's native layout (an NCHW map would be reordered at each of them).
            x = self.norm(f).unflatten(1, (h, w)).permute(0, 3, 1, 2)
            x = self.projects[k](x)
            if self.cfg.pos_embed:
                x = add_uv_embedding(x, aspect)
            x = self.resize_layers[k](x)
            layers.append(getattr(self.scratch, f"layer{k + 1}_rn")(x))
        s = self.scratch
        main = resize(s.output_conv1(fuse(s, layers)), (H, W))
        out = {}
        if self.cfg.kind == "gs":
            main = main + self.images_merger(images)
        if self.cfg.pos_embed:
            main = add_uv_embedding(main, aspect)
        logits = s.output_conv2(main)
        if self.cfg.kind == "dual":
            out["depth"], out["depth_conf"] = logits[:, 0].exp(), logits[:, 1].exp() + 1
            if not rays:
                return out
            # Only the finest ray level is used; the official head also computes three coarser ones and
            # discards them, which we skip.
            aux = s.output_conv1_aux[3](fuse(s, layers, "_aux"))
            ray = s.output_conv2_aux[3](add_uv_embedding(aux, aspect))
            out["ray"] = ray[:, :6].permute(0, 2, 3, 1)
            out["ray_conf"] = ray[:, 6].exp() + 1
        elif self.cfg.kind == "mono":
            out["depth"] = logits[:, 0].exp()
            if self.cfg.sky:
                out["sky"] = F.relu(s.sky_output_conv2(main)[:, 0])
        else:  # gs: linear adapter channels (37 for SH degree 2) + opacity logit last
            out["raw"] = logits[:, :-1].permute(0, 2, 3, 1)
            out["opacity"] = torch.sigmoid(logits[:, -1])
        return out
