"""DA3 forward under bf16 autocast against fp32 on CUDA: relative error of the depth, and the speed of both.

    python benchmarks/gpu_bf16.py                      # CUDA: da3-small, da3-base, da3-tiny-synthetic, 8 views
    python benchmarks/gpu_bf16.py --md gpu_bf16.md     # also write the markdown table to a file
    python benchmarks/gpu_bf16.py --dry-run            # CPU, tiny input: runs the code path, numbers mean nothing

Models: da3-small and da3-base with random weights (``DA3.from_config``, seeded, then every tensor perturbed by
N(0, 0.02^2) as ``tests/oracle.py`` does, since the plain init leaves norms and layer scales at values that make
the output almost constant), and the bundled, trained ``da3-tiny-synthetic``. Input: one seeded batch of S
ImageNet-normalised random images at HxW. The fp32 reference runs with TF32 off (matmul and cuDNN); the bf16 pass
runs the model inside ``torch.autocast(dtype=bfloat16)``, as ``da3_splat.model.inference.autocast_for`` does for
inference: the backbone in bf16, the heads and camera modules in fp32 (the model turns autocast off there).

Depth errors, per pixel against fp32: max |a-b| / max |b|, mean and 99th percentile of |a-b| / |b|, and the mean
|a-b| over the std of the fp32 depth (random weights give a nearly flat depth, where the relative error alone says
little). The run fails (exit 1) if an output is not finite or the mean relative depth error exceeds --tol. The
timing helpers here are also used by ``gpu_fps.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import machine_header, md_table

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BUNDLED = "da3-tiny-synthetic"
DEFAULTS = {"models": f"da3-small,da3-base,{BUNDLED}", "views": 8, "height": 336, "width": 504, "runs": 5, "warmup": 2}
DRY_RUN = {"models": f"da3-small,{BUNDLED}", "views": 2, "height": 42, "width": 56, "runs": 1, "warmup": 0}


def apply_defaults(args: argparse.Namespace, defaults: dict) -> None:
    """Fill the options not given on the command line (their defaults depend on --dry-run)."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def fail(msg: str) -> None:
    """One line on stderr, exit status 2 (bad arguments or environment)."""
    print(f"{Path(sys.argv[0]).name}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def pick_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        fail("no CUDA device (torch.cuda.is_available() is False); --dry-run runs a tiny CPU version")
    return torch.device("cuda")


def check_size(height: int, width: int, views: int) -> None:
    if height <= 0 or width <= 0 or height % 14 or width % 14:
        fail(f"--height and --width must be positive multiples of 14 (the patch size), got {height}x{width}")
    if views < 1:
        fail(f"--views must be at least 1, got {views}")


def forward_args(description: str, defaults: dict, views_note: str = "", add_more=None):
    """The options gpu_bf16.py and gpu_fps.py share (model list, input size, dtype, runs, --md, --dry-run), with
    ``add_more(parser)`` for a script's own. Returns a parser; :func:`parse_forward_args` reads it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", help=f"comma-separated model names (default: {defaults['models']})")
    ap.add_argument("--views", type=int, help=f"views per batch, S (default {defaults['views']}{views_note})")
    ap.add_argument("--height", type=int, help=f"input height, a multiple of 14 (default {defaults['height']})")
    ap.add_argument("--width", type=int, help=f"input width, a multiple of 14 (default {defaults['width']})")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    ap.add_argument("--runs", type=int, help=f"timed passes, median reported (default {defaults['runs']})")
    ap.add_argument("--warmup", type=int, help=f"untimed passes first (default {defaults['warmup']})")
    if add_more is not None:
        add_more(ap)
    ap.add_argument("--md", type=Path, help="write the markdown section to this file")
    ap.add_argument("--dry-run", action="store_true", help="CPU, a tiny input and 1 run: exercises the code path")
    return ap


def parse_forward_args(ap, argv, defaults: dict, dry_run: dict, extra_models: tuple[str, ...] = ()):
    """Parse, fill the defaults (they depend on --dry-run), check the sizes and the model names; fails with one
    line (exit 2) on a bad value. Returns (args, models)."""
    args = ap.parse_args(argv)
    apply_defaults(args, dry_run if args.dry_run else defaults)
    check_size(args.height, args.width, args.views)
    if args.runs < 1 or args.warmup < 0:
        fail("--runs must be at least 1 and --warmup at least 0")
    models = [m for m in args.models.split(",") if m]
    from da3_splat.model.config import get_config

    for m in models:
        if m in extra_models:
            continue
        try:
            get_config(m)
        except Exception:
            known = ", ".join(("da3-small", "da3-base", "da3-large", "da3-giant", *extra_models))
            fail(f"unknown model {m!r} (a configuration name such as {known})")
    return args, models


def build_model(name: str, device: torch.device, seed: int = 0, noise: float = 0.0):
    """A DA3 on ``device``: the bundled trained model by name, else an official configuration with random weights
    built directly on the device (a billion-parameter init on the CPU takes minutes), optionally perturbed."""
    from da3_splat import DA3

    if name == BUNDLED:
        return DA3.from_pretrained(name, device=str(device)).eval()
    torch.manual_seed(seed)
    with torch.device(device):
        model = DA3.from_config(name)
    model = model.to(device).eval()
    if noise:
        g = torch.Generator(device=device).manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.state_dict().values():
                if p.is_floating_point():
                    p.add_(torch.randn(p.shape, generator=g, device=device, dtype=p.dtype) * noise)
    return model


def random_views(views: int, height: int, width: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """(1, S, 3, H, W) seeded random images, ImageNet-normalised range."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, views, 3, height, width, generator=g).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, x: torch.Tensor, amp_dtype: torch.dtype | None, runs: int, warmup: int):
    """-> (median seconds per forward, all timed seconds, the last output). ``return_rays=False`` as ``infer``."""
    dev = x.device
    amp = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    times, out = [], None
    for i in range(warmup + runs):
        out = None  # free the previous output before the next pass
        sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode(), amp:
            out = model(x, return_rays=False)
        sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def depth_errors(test: torch.Tensor, ref: torch.Tensor) -> dict:
    a, b = test.double().flatten(), ref.double().flatten()
    diff = (a - b).abs()
    rel = diff / b.abs().clamp(min=1e-12)
    sample = rel if rel.numel() <= 10_000_000 else rel[:: rel.numel() // 10_000_000 + 1]
    return {
        "max_rel": float(diff.max() / b.abs().max().clamp(min=1e-12)),
        "mean_rel": float(rel.mean()),
        "p99_rel": float(torch.quantile(sample, 0.99)),
        "mean_over_std": float(diff.mean() / b.std().clamp(min=1e-12)),
        "ref_mean": float(b.mean()),
        "ref_std": float(b.std()),
    }


def finite(out) -> bool:
    return all(torch.isfinite(out[k]).all() for k in ("depth", "depth_conf", "extrinsics") if k in out)


def compare(name: str, x: torch.Tensor, amp_dtype: torch.dtype, runs: int, warmup: int, noise: float) -> dict:
    dev = x.device
    model = build_model(name, dev, noise=0.0 if name == BUNDLED else noise)
    t32, _, ref = time_forward(model, x, None, runs, warmup)
    t16, _, low = time_forward(model, x, amp_dtype, runs, warmup)
    row = {"model": name, "fp32_s": t32, "amp_s": t16, "ok": finite(ref) and finite(low)}
    row.update(depth_errors(low.depth, ref.depth))
    if "depth_conf" in ref:
        row["conf_max_rel"] = depth_errors(low.depth_conf, ref.depth_conf)["max_rel"]
    if "extrinsics" in ref:
        row["ext_max_abs"] = float((low.extrinsics.double() - ref.extrinsics.double()).abs().max())
    del model, ref, low
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict], views: int, dtype: str) -> str:
    heads = [
        "model",
        "depth max rel",
        "depth mean rel",
        "depth p99 rel",
        "mean err / depth std",
        "conf max rel",
        "extrinsics max abs",
        "fp32 s",
        f"{dtype} s",
        "speed-up",
        f"{dtype} FPS",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["model"],
                f"{r['max_rel']:.2e}",
                f"{r['mean_rel']:.2e}",
                f"{r['p99_rel']:.2e}",
                f"{r['mean_over_std']:.2e}",
                f"{r.get('conf_max_rel', float('nan')):.2e}",
                f"{r.get('ext_max_abs', float('nan')):.2e}",
                f"{r['fp32_s']:.4f}",
                f"{r['amp_s']:.4f}",
                f"{r['fp32_s'] / r['amp_s']:.2f}x",
                f"{views / r['amp_s']:.1f}",
            ]
        )
    return md_table(heads, body)


def main(argv=None) -> int:
    def own(ap):
        ap.add_argument("--noise", type=float, default=0.02, help="std of the perturbation of the random weights")
        ap.add_argument("--tol", type=float, default=0.05, help="fail when the mean relative depth error exceeds this")

    ap = forward_args(__doc__.split("\n")[0], DEFAULTS, add_more=own)
    args, models = parse_forward_args(ap, argv, DEFAULTS, DRY_RUN, extra_models=(BUNDLED,))
    dev = pick_device(args.dry_run)
    if dev.type == "cuda":  # a strict fp32 reference
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    x = random_views(args.views, args.height, args.width, dev)
    rows = []
    for name in models:
        rows.append(compare(name, x, DTYPES[args.dtype], args.runs, args.warmup, args.noise))
        r = rows[-1]
        print(
            f"{name}: depth max rel {r['max_rel']:.2e}, mean rel {r['mean_rel']:.2e}; "
            f"fp32 {r['fp32_s']:.4f} s, {args.dtype} {r['amp_s']:.4f} s",
            flush=True,
        )
    bad = [r["model"] for r in rows if not r["ok"] or not r["mean_rel"] <= args.tol]
    where = "CPU dry run (tiny input; the numbers mean nothing)" if args.dry_run else str(dev)
    text = "\n".join(
        [
            machine_header(
                f"DA3 forward: {args.dtype} autocast vs fp32",
                [
                    f"- device: {where}; input: 1 x {args.views} views x {args.height}x{args.width}, seeded random",
                    "- fp32 reference with TF32 off; median of "
                    f"{args.runs} timed passes after {args.warmup} warm-up; return_rays=False (as infer)",
                    f"- random weights perturbed by N(0, {args.noise}^2); {BUNDLED} is the bundled trained model",
                    f"- check: outputs finite and depth mean rel <= {args.tol}: "
                    + ("**failed** for " + ", ".join(bad) if bad else "passed"),
                ],
            ),
            table(rows, args.views, args.dtype),
        ]
    )
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
