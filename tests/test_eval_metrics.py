"""Tests for the image metrics in da3_splat.image_metrics (PSNR, SSIM, offline-only LPIPS, aggregation)."""

from __future__ import annotations

import importlib.machinery
import math
import socket
import sys
import types

import pytest
import torch

from da3_splat.image_metrics import ImageMetrics, load_lpips, lpips_status, psnr, ssim


def _ssim_reference(x: torch.Tensor, y: torch.Tensor, window: int, sigma: float) -> float:
    """Straightforward SSIM of one (C, H, W) image pair: loop over every window fully inside the image."""
    half = (window - 1) / 2
    g = [math.exp(-((k - half) ** 2) / (2 * sigma * sigma)) for k in range(window)]
    wts = [[a * b for b in g] for a in g]
    total_w = sum(sum(r) for r in wts)
    wts = [[v / total_w for v in r] for r in wts]
    c1, c2 = 0.01**2, 0.03**2
    C, H, W = x.shape
    values = []
    for c in range(C):
        for r0 in range(H - window + 1):
            for q0 in range(W - window + 1):
                px = [[float(x[c, r0 + a, q0 + b]) for b in range(window)] for a in range(window)]
                py = [[float(y[c, r0 + a, q0 + b]) for b in range(window)] for a in range(window)]
                mx = sum(wts[a][b] * px[a][b] for a in range(window) for b in range(window))
                my = sum(wts[a][b] * py[a][b] for a in range(window) for b in range(window))
                vx = sum(wts[a][b] * (px[a][b] - mx) ** 2 for a in range(window) for b in range(window))
                vy = sum(wts[a][b] * (py[a][b] - my) ** 2 for a in range(window) for b in range(window))
                cov = sum(wts[a][b] * (px[a][b] - mx) * (py[a][b] - my) for a in range(window) for b in range(window))
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


# --------------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize("window,sigma,size", [(7, 1.5, (14, 13)), (11, 1.5, (13, 12)), (5, 0.8, (9, 10))])
def test_ssim_matches_double_loop_reference(window, sigma, size):
    g = torch.Generator().manual_seed(window)
    x = torch.rand(3, *size, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(3, *size, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = float(ssim(x, y, window=window, sigma=sigma))
    assert ours == pytest.approx(_ssim_reference(x, y, window, sigma), abs=1e-10)


def test_ssim_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 3, 20, 22, generator=g)
    y = torch.rand(2, 4, 3, 20, 22, generator=g)
    assert ssim(x, y).shape == (2, 4)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 4))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    scores = [float(ssim((x + s * torch.randn(x.shape, generator=g)).clamp(0, 1), x).mean()) for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_ssim_is_differentiable():
    x = torch.rand(1, 2, 6, 7, dtype=torch.float64)
    y = torch.rand(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ssim(t, x, window=3), (y,), fast_mode=True)


def test_ssim_ignores_autocast():
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = ssim(x, y)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, ssim(x, y))


def test_ssim_rejects_too_small_images():
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


# --------------------------------------------------------------------------------------------------
# PSNR


def test_psnr_values_and_mask():
    target = torch.full((2, 3, 8, 8), 0.5)
    pred = target + 0.1
    torch.testing.assert_close(psnr(pred, target), torch.full((2,), 20.0))
    assert float(psnr(target, target)[0]) == pytest.approx(100.0)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    pred2 = target.clone()
    pred2[..., 4:] += 0.3  # errors only outside the mask
    assert float(psnr(pred2, target, mask)[0]) == pytest.approx(100.0)
    torch.testing.assert_close(psnr(pred2, target, mask), psnr(pred2, target, mask[:, None]))
    mask[1] = False
    out = psnr(pred2, target, mask)
    assert math.isnan(float(out[1])) and math.isfinite(float(out[0]))


# --------------------------------------------------------------------------------------------------
# LPIPS: local files only


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) any connection or torch.hub download attempt."""
    attempts: list[str] = []

    def refuse_connect(self, address):
        attempts.append(f"connect {address}")
        raise OSError("network disabled in tests")

    def refuse_download(url, *a, **k):
        attempts.append(f"download {url}")
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)
    return attempts


def _fake_module(monkeypatch, name: str, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_lpips_none_offline_without_network(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert load_lpips("cpu") is None
    assert lpips_status() != "available" and "LPIPS skipped" in lpips_status()
    assert no_network == []


def test_lpips_needs_backbone_weights_on_disk(no_network, monkeypatch, tmp_path):
    built = []
    _fake_module(monkeypatch, "lpips", LPIPS=lambda **kw: built.append(kw))
    _fake_module(monkeypatch, "torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert load_lpips("cpu") is None
    assert "AlexNet" in lpips_status() and str(tmp_path) in lpips_status()
    assert built == [] and no_network == []


class _StubLpips(torch.nn.Module):
    """Stands in for lpips.LPIPS: mean absolute difference after the [-1, 1] mapping."""

    def __init__(self, net, verbose, download=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        if download:  # what a real backbone would do with a missing file
            torch.hub.download_url_to_file("https://example.invalid/alexnet.pth", "/nonexistent")

    def forward(self, x, y, normalize=False):
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        return (self.w * (x - y).abs()).mean(dim=(1, 2, 3), keepdim=True)


def _with_weight_file(monkeypatch, tmp_path, download: bool):
    _fake_module(monkeypatch, "lpips", LPIPS=lambda net, verbose: _StubLpips(net, verbose, download))
    _fake_module(monkeypatch, "torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"")


def test_lpips_loads_with_local_files(monkeypatch, tmp_path):
    _with_weight_file(monkeypatch, tmp_path, download=False)
    fn = load_lpips("cpu")
    assert fn is not None and lpips_status() == "available"
    a, b = torch.zeros(2, 5, 3, 8, 8), torch.full((2, 5, 3, 8, 8), 0.5)
    torch.testing.assert_close(fn(a, b), torch.ones(2, 5))


def test_lpips_download_attempt_is_blocked(monkeypatch, tmp_path):
    _with_weight_file(monkeypatch, tmp_path, download=True)
    calls = []

    def downloader(*a, **k):
        calls.append(a)

    monkeypatch.setattr(torch.hub, "download_url_to_file", downloader)
    assert load_lpips("cpu") is None
    assert "download blocked" in lpips_status() and calls == []
    assert torch.hub.download_url_to_file is downloader  # the guard puts the original back


# --------------------------------------------------------------------------------------------------
# Aggregation


def test_image_metrics_aggregation():
    m = ImageMetrics.from_values([20.0, 30.0, float("nan")], torch.tensor([0.5, 0.7, 0.9]), None)
    assert m.psnr == pytest.approx(25.0) and m.count == 2  # NaN (empty mask) not counted
    assert m.ssim == pytest.approx(0.7) and m.lpips is None
    assert m.to_dict() == {"psnr": m.psnr, "ssim": m.ssim, "lpips": None, "count": 2}
    other = ImageMetrics(psnr=40.0, ssim=0.9, lpips=None, count=2)
    merged = ImageMetrics.merge([m, other])
    assert merged.psnr == pytest.approx(32.5) and merged.count == 4 and merged.lpips is None
    img = torch.rand(3, 3, 16, 16)
    full = ImageMetrics.compute(img, img, lpips_fn=lambda p, t: torch.zeros(p.shape[:-3]))
    assert full.psnr == pytest.approx(100.0) and full.ssim == pytest.approx(1.0) and full.lpips == 0.0
