"""DINOv2 ViT with DA3's alternating per-view / cross-view attention.

Tokens are kept as (B, S, 1 + P, C): one cls/camera token and P patch tokens per view. Local blocks attend within
a view, global blocks across all views of a sample. Module and parameter names follow the official checkpoint
layout (``blocks.{i}.attn.qkv`` ...) so weights load without renaming.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from da3_splat.model.config import ViTConfig

REF_STRATEGIES = ("saddle_balanced", "saddle_sim_range", "first", "middle")
MIN_VIEWS_FOR_REF_SELECTION = 3


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-5) if qk_norm else None
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-5) if qk_norm else None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (also used, without qk-norm/RoPE, by the camera encoder)."""

    def __init__(self, dim, num_heads, ffn_hidden, *, ffn="mlp", qk_norm=False, eps=1e-6, ls_init=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, ffn_hidden) if ffn == "swiglu" else Mlp(dim, ffn_hidden)
        self.ls2 = LayerScale(dim, ls_init)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


# --------------------------------------------------------------------------------------------------
# 2D RoPE: the first half of each head vector rotates with the token's row, the second with its column.


def rope_tables(pos: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """pos (N, 2) integer (row, col) -> cos and *signed* sin tables (N, head_dim).

    The sin table carries rotate_half's signs ([-sin, sin] within each half), so ``apply_rope`` needs one
    swap of quarters instead of two negations and a concatenation; the products are bitwise the same."""
    quarter = head_dim // 4
    inv_freq = 1.0 / base ** (torch.arange(quarter, dtype=torch.float32, device=pos.device) * 2 / (head_dim // 2))
    ang_y = pos[:, :1].float() * inv_freq  # (N, quarter)
    ang_x = pos[:, 1:].float() * inv_freq
    # Angles in fp32, cast to the q/k dtype before cos/sin (matters only under bf16).
    ang = torch.cat([ang_y, ang_y, ang_x, ang_x], dim=-1).to(dtype)
    sin = ang.sin()
    sign = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=dtype, device=pos.device).repeat_interleave(quarter)
    return ang.cos(), sin * sign


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x (..., N, D); rotate_half applied within each D/2 half: [a, b] -> [-b, a] with a, b of size D/4."""
    q = x.shape[-1] // 4
    swapped = x.unflatten(-1, (2, 2, q)).flip(-2).flatten(-3)  # [a, b, c, d] -> [b, a, d, c]
    return x * cos + swapped * signed_sin


def rope_positions(h: int, w: int, device, per_view_distinct: bool) -> Tensor:
    """(1 + h*w, 2) positions: token 0 at (0, 0); patches at (row+1, col+1) for local blocks, or all at (1, 1)
    for global blocks (DA3 gives global attention no relative position between patches)."""
    if per_view_distinct:
        rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        patches = torch.stack([rows.flatten(), cols.flatten()], dim=-1) + 1
    else:
        patches = torch.ones(h * w, 2, dtype=torch.long, device=device)
    return torch.cat([torch.zeros(1, 2, dtype=torch.long, device=device), patches], dim=0)


# --------------------------------------------------------------------------------------------------
# Reference-view selection


def select_reference_view(cls_tokens: Tensor, strategy: str) -> Tensor:
    """cls_tokens (B, S, C) -> index of the reference view per sample (B,)."""
    B, S, _ = cls_tokens.shape
    if strategy == "first":
        return torch.zeros(B, dtype=torch.long, device=cls_tokens.device)
    if strategy == "middle":
        return torch.full((B,), S // 2, dtype=torch.long, device=cls_tokens.device)
    if strategy not in REF_STRATEGIES:
        raise ValueError(f"unknown ref_view_strategy {strategy!r}; choose from {REF_STRATEGIES}")
    unit = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(1, 2) - torch.eye(S, device=unit.device, dtype=unit.dtype)
    if strategy == "saddle_sim_range":
        return (sim.max(dim=-1).values - sim.min(dim=-1).values).argmax(dim=1)

    def minmax(m: Tensor) -> Tensor:
        lo, hi = m.min(dim=1, keepdim=True).values, m.max(dim=1, keepdim=True).values
        return (m - lo) / (hi - lo + 1e-8)

    # "Saddle" view: the one most average in similarity to the others, token norm and token variance.
    metrics = (sim.sum(-1) / (S - 1), cls_tokens.norm(dim=-1), unit.var(dim=-1))
    score = sum((minmax(m) - 0.5).abs() for m in metrics)
    return score.argmin(dim=1)


def reference_first_order(ref: Tensor, S: int) -> Tensor:
    """(B,) reference indices -> (B, S) permutation putting the reference first, others in input order."""
    ar = torch.arange(S, device=ref.device)
    others = ar[None].expand(ref.shape[0], S)
    rest = others[others != ref[:, None]].view(ref.shape[0], S - 1)
    return torch.cat([ref[:, None], rest], dim=1)


def gather_views(x: Tensor, order: Tensor) -> Tensor:
    """x (B, S, ...) reordered along S by order (B, S)."""
    idx = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


# --------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, P, C), row-major patches


class DinoViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False  # recompute blocks in backward (training option)
        C = cfg.dim
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, C))
        if cfg.alt_start != -1:
            self.camera_token = nn.Parameter(torch.zeros(1, 2, C))  # [reference view, other views]
        start = cfg.alt_start if cfg.alt_start != -1 else cfg.depth
        self.blocks = nn.ModuleList(
            Block(C, cfg.num_heads, cfg.ffn_hidden, ffn=cfg.ffn, qk_norm=i >= start) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(C, eps=1e-5)

    def is_global(self, i: int) -> bool:
        a = self.cfg.alt_start
        return a != -1 and i >= a and i % 2 == 1

    def interpolate_pos_embed(self, h: int, w: int, dtype: torch.dtype) -> Tensor:
        g = self.cfg.pos_grid
        pe = self.pos_embed
        if h == g and w == g:
            return pe.to(dtype)
        grid = pe[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
        # DINOv2 samples with scale_factor (h + 0.1) / g rather than size=(h, w); the two differ.
        grid = F.interpolate(
            grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False, antialias=False
        )
        assert grid.shape[-2:] == (h, w)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pe[:, :1].float(), grid], dim=1).to(dtype)

    def embed(self, images: Tensor) -> Tensor:
        B, S, _, H, W = images.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be a multiple of the patch size {p}")
        x = self.patch_embed(images.flatten(0, 1))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_embed(H // p, W // p, x.dtype)
        return x.view(B, S, *x.shape[1:])

    def forward(
        self, images: Tensor, cam_token: Tensor | None = None, ref_view_strategy: str = "saddle_balanced"
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """images (B, S, 3, H, W) normalised -> ([(patch_feats (B, S, P, D), cam_tok (B, S, D)) per out layer],
        reference-first view order (B, S) or None when views were not reordered)."""
        cfg = self.cfg
        B, S, _, H, W = images.shape
        h, w = H // cfg.patch_size, W // cfg.patch_size
        x = self.embed(images)
        N = x.shape[2]
        head_dim = cfg.dim // cfg.num_heads
        rope_local = rope_global = None
        if cfg.alt_start != -1:
            rope_local = rope_tables(rope_positions(h, w, x.device, True), head_dim, cfg.rope_base, x.dtype)
            pos_g = rope_positions(h, w, x.device, False).repeat(S, 1)
            rope_global = rope_tables(pos_g, head_dim, cfg.rope_base, x.dtype)

        order = None
        local_x = x
        outputs = []
        for i, blk in enumerate(self.blocks):
            if i == cfg.alt_start - 1 and S >= MIN_VIEWS_FOR_REF_SELECTION and cam_token is None:
                ref = select_reference_view(x[:, :, 0], ref_view_strategy)
                order = reference_first_order(ref, S)
                x, local_x = gather_views(x, order), gather_views(local_x, order)
            if i == cfg.alt_start:
                if cam_token is None:
                    tok = self.camera_token.to(x.dtype)
                    cam_token = torch.cat([tok[:, :1], tok[:, 1:].expand(-1, S - 1, -1)], dim=1).expand(B, -1, -1)
                x = torch.cat([cam_token.to(x.dtype)[:, :, None], x[:, :, 1:]], dim=2)
            rope_on = cfg.alt_start != -1 and i >= cfg.alt_start
            run = blk
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                run = functools.partial(torch.utils.checkpoint.checkpoint, blk, use_reentrant=False)
            if self.is_global(i):
                x = run(x.reshape(B, S * N, -1), rope_global if rope_on else None).view(B, S, N, -1)
            else:
                x = run(x.reshape(B * S, N, -1), rope_local if rope_on else None).view(B, S, N, -1)
                local_x = x
            if i in cfg.out_layers:
                outputs.append(self._head_features(local_x, x, order))
        return outputs, order

    def _head_features(self, local_x: Tensor, x: Tensor, order: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.cfg.cat_token:
            cam = torch.cat([local_x[:, :, 0], x[:, :, 0]], dim=-1)  # raw: the camera decoder sees no norm
            feats = torch.cat([local_x[:, :, 1:], self.norm(x[:, :, 1:])], dim=-1)
        else:
            normed = self.norm(x)
            cam, feats = normed[:, :, 0], normed[:, :, 1:]
        if order is not None:  # heads and camera decoder see the input view order
            inv = torch.argsort(order, dim=1)
            feats, cam = gather_views(feats, inv), gather_views(cam, inv)
        return feats, cam
