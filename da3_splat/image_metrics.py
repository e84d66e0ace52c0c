"""Image metrics (PSNR, SSIM, optional LPIPS) and their aggregation.

Images are float tensors (..., 3, H, W) in [0, 1]; every metric returns one value per image (shape ``...``).
LPIPS is only offered when the ``lpips`` package and its AlexNet backbone weights are already on disk:
nothing here ever downloads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# --- metrics

SSIM_C1 = 0.01**2  # (K1 * L)^2 with data range L = 1
SSIM_C2 = 0.03**2
PSNR_MIN_MSE = 1e-10  # caps PSNR at 100 dB for identical images
LPIPS_NET = "alex"
# torchvision's file name for the ImageNet AlexNet the lpips package builds on.
_ALEXNET_GLOB = "alexnet-owt-*.pth"


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"image shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected images (..., C, H, W), got {tuple(pred.shape)}")


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1), shape ``pred.shape[:-3]``.

    ``mask`` (..., H, W) or (..., 1, H, W) restricts the MSE to its pixels; an image whose mask is empty
    gets NaN (there is nothing to measure). Identical images give 100 dB rather than +inf.
    """
    _check_images(pred, target)
    dtype = torch.promote_types(pred.dtype, torch.float32)  # float64 inputs stay float64
    err = (pred.to(dtype) - target.to(dtype)) ** 2
    if mask is None:
        mse = err.mean(dim=(-3, -2, -1))
    else:
        m = mask.to(err.dtype)
        m = m.unsqueeze(-3) if m.dim() == err.dim() - 1 else m
        m = m.expand_as(err)
        count = m.sum(dim=(-3, -2, -1))
        mse = (err * m).sum(dim=(-3, -2, -1)) / count.clamp(min=1)
        mse = torch.where(count > 0, mse, torch.full_like(mse, math.nan))
    return 10.0 * torch.log10(1.0 / mse.clamp(min=PSNR_MIN_MSE))


def uint8_psnr(a, b, mask=None) -> float:
    """PSNR (dB) of uint8 images ``a`` against ``b`` (H, W, 3) numpy, over the ``mask`` (H, W) pixels when given."""

    def chw(x):
        return torch.from_numpy(x).permute(2, 0, 1).double() / 255.0

    m = None if mask is None else torch.from_numpy(mask)
    return float(psnr(chw(a), chw(b), m))


def gaussian_window(size: int, sigma: float, dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian of odd length ``size``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd size, got {size}")
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _blur_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter over (N, C, H, W) without padding ('valid' output)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel, per-channel SSIM (..., C, H - window + 1, W - window + 1) ('valid' filtering)."""
    _check_images(pred, target)
    H, W = pred.shape[-2:]
    if H < window or W < window:
        raise ValueError(f"SSIM window {window} is larger than the image ({H}x{W})")
    lead, c = pred.shape[:-3], pred.shape[-3]
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    x = pred.to(dtype).reshape(-1, c, H, W)
    y = target.to(dtype).reshape(-1, c, H, W)
    g = gaussian_window(window, sigma, dtype, pred.device)
    # Variances are differences of moments: in bf16/fp16 (autocast) they cancel badly, so stay in fp32.
    with torch.autocast(device_type=pred.device.type, enabled=False):
        # One filter call for all five moments keeps it cheap.
        moments = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
    mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    out = num / den
    return out.reshape(*lead, c, *out.shape[-2:])


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image, shape ``pred.shape[:-3]``; differentiable.

    Gaussian window (``window`` x ``window``, std ``sigma``), constants C1 = 0.01^2, C2 = 0.03^2 for data
    range 1, population (biased) local variances, and 'valid' filtering: only windows that lie fully inside
    the image are averaged (as Wang et al.'s reference code), so borders are never padded. The mean runs over
    channels and valid positions. Images smaller than the window raise ``ValueError``.
    """
    return ssim_map(pred, target, window, sigma).mean(dim=(-3, -2, -1))


# --------------------------------------------------------------------------------------------------
# LPIPS (optional, local weights only)

LpipsFn = Callable[[Tensor, Tensor], Tensor]
_lpips_reason: str | None = None  # why the last load_lpips() returned None (None when it succeeded)


def _torch_hub_checkpoints() -> Path:
    # torch.hub.get_dir() honours TORCH_HOME / XDG_CACHE_HOME, which is where torchvision caches weights.
    return Path(torch.hub.get_dir()) / "checkpoints"


def _module_available(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def alexnet_weights_present() -> bool:
    """Whether torchvision's AlexNet weights (LPIPS's backbone) are already on disk (nothing is downloaded)."""
    return any(_torch_hub_checkpoints().glob(_ALEXNET_GLOB))


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS cannot be loaded from local files, or None when it can (checks only; loads nothing)."""
    for pkg in ("lpips", "torchvision"):
        if not _module_available(pkg):
            return f"the {pkg!r} package is not installed (LPIPS skipped; it is never downloaded)"
    if not alexnet_weights_present():
        folder = _torch_hub_checkpoints()
        return f"AlexNet backbone weights ({_ALEXNET_GLOB}) are not in {folder} (LPIPS skipped; never downloaded)"
    return None


@contextlib.contextmanager
def _no_downloads():
    """Make torch.hub's downloader fail, so a missing file can never turn into a network request."""
    from torch import hub

    def refuse(url, *args, **kwargs):
        raise RuntimeError(f"download blocked: {url}")

    saved = hub.download_url_to_file
    hub.download_url_to_file = refuse
    try:
        yield
    finally:
        hub.download_url_to_file = saved


def load_lpips(device: str | torch.device = "cpu") -> LpipsFn | None:
    """An LPIPS (AlexNet) function ``fn(pred, target) -> (...)`` for images in [0, 1], or None.

    None when the ``lpips`` package or its backbone weights are not already on disk; the reason is then
    available from :func:`lpips_status`. Never downloads and never raises for a missing dependency.
    """
    global _lpips_reason
    _lpips_reason = lpips_unavailable_reason()
    if _lpips_reason is not None:
        return None
    try:
        import lpips  # type: ignore[import-not-found]

        with _no_downloads():
            net = lpips.LPIPS(net=LPIPS_NET, verbose=False).to(device).eval()
    except Exception as e:  # noqa: BLE001 - a broken local install must not take the evaluation down
        _lpips_reason = f"LPIPS could not be built from local files: {type(e).__name__}: {e}"
        return None
    for p in net.parameters():
        p.requires_grad_(False)

    def fn(pred: Tensor, target: Tensor) -> Tensor:
        _check_images(pred, target)
        lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
        x = pred.reshape(-1, c, h, w).to(device).float()
        y = target.reshape(-1, c, h, w).to(device).float()
        return net(x, y, normalize=True).reshape(lead)  # normalize: [0, 1] -> [-1, 1]

    return fn


def lpips_status() -> str:
    """'available', or the reason LPIPS is (or would be) skipped."""
    reason = _lpips_reason if _lpips_reason is not None else lpips_unavailable_reason()
    return "available" if reason is None else reason


# --------------------------------------------------------------------------------------------------
# Aggregation


def _mean(values: Tensor | Sequence[float]) -> tuple[float, int]:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    t = t[~torch.isnan(t)]  # images with nothing to measure (empty mask) do not count
    return (float(t.mean()) if t.numel() else math.nan), int(t.numel())


@dataclass
class ImageMetrics:
    """Mean image metrics over a set of images; ``lpips`` is None when LPIPS was unavailable."""

    psnr: float
    ssim: float
    lpips: float | None
    count: int

    @classmethod
    def from_values(
        cls, psnr: Tensor | Sequence[float], ssim: Tensor | Sequence[float], lpips: Tensor | Sequence[float] | None
    ) -> ImageMetrics:
        """Means of per-image values (NaN entries, e.g. empty masks, are left out of each mean)."""
        p, n = _mean(psnr)
        s, _ = _mean(ssim)
        lp = None if lpips is None else _mean(lpips)[0]
        return cls(psnr=p, ssim=s, lpips=lp, count=n)

    @classmethod
    def compute(
        cls, pred: Tensor, target: Tensor, lpips_fn: LpipsFn | None = None, mask: Tensor | None = None
    ) -> ImageMetrics:
        """Metrics of images (..., 3, H, W) in [0, 1]. ``mask`` only affects PSNR (SSIM/LPIPS use full images)."""
        with torch.no_grad():
            return cls.from_values(
                psnr(pred, target, mask), ssim(pred, target), None if lpips_fn is None else lpips_fn(pred, target)
            )

    @classmethod
    def merge(cls, parts: Sequence[ImageMetrics]) -> ImageMetrics:
        """Image-weighted mean of several aggregates (e.g. per scene -> whole benchmark)."""
        parts = [p for p in parts if p.count > 0]
        total = sum(p.count for p in parts)
        if total == 0:
            return cls(math.nan, math.nan, None, 0)

        def wmean(values: list[float]) -> float:
            return sum(v * p.count for v, p in zip(values, parts)) / total

        has_lpips = all(p.lpips is not None for p in parts)
        return cls(
            psnr=wmean([p.psnr for p in parts]),
            ssim=wmean([p.ssim for p in parts]),
            lpips=wmean([p.lpips for p in parts]) if has_lpips else None,  # type: ignore[misc]
            count=total,
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# --- evaluation protocols (below)
