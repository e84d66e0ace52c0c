"""DA3 throughput on CUDA: images per second at 504x336 for da3-small/base/large/giant, against the paper's A100.

    python benchmarks/gpu_fps.py                       # CUDA: 4 models, 32 views per batch, bf16 autocast
    python benchmarks/gpu_fps.py --md gpu_fps.md       # also write the markdown table to a file
    python benchmarks/gpu_fps.py --dry-run             # CPU, tiny input, da3-small: runs the code path only

The paper (DA3, Table 8) reports images per second for 32-image scenes at 504x336 on one A100: da3-small 160.5,
da3-base 126.5, da3-large 78.4, da3-giant 37.6. Here: random weights (``DA3.from_config`` built on the GPU; speed
does not depend on the values), one batch of S seeded random views at 336 (height) x 504 (width), the model under
``torch.autocast`` in bf16 (fp16 with --dtype fp16; the heads run in fp32 inside the model, as in inference),
``return_rays=False`` (what ``infer`` runs; the ray branch is what the official net computes and discards), no GS
head. FPS = S / median seconds per forward over --runs timed passes after --warmup; the peak is
``torch.cuda.max_memory_allocated`` over the timed passes. Weights stay fp32 (autocast casts them per op).
"""

from __future__ import annotations

import sys

import torch
from _common import machine_header, md_table
from gpu_bf16 import DTYPES, build_model, forward_args, parse_forward_args, pick_device, random_views, time_forward

PAPER_A100_FPS = {"da3-small": 160.5, "da3-base": 126.5, "da3-large": 78.4, "da3-giant": 37.6}
DEFAULTS = {"models": ",".join(PAPER_A100_FPS), "views": 32, "height": 336, "width": 504, "runs": 5, "warmup": 2}
DRY_RUN = {"models": "da3-small", "views": 2, "height": 42, "width": 56, "runs": 1, "warmup": 0}


def measure(name: str, x: torch.Tensor, amp_dtype, runs: int, warmup: int) -> dict:
    dev = x.device
    model = build_model(name, dev)
    params = sum(p.numel() for p in model.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    median, times, out = time_forward(model, x, amp_dtype, runs, warmup)
    ok = bool(torch.isfinite(out.depth).all())
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    del model, out
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"model": name, "params_m": params / 1e6, "median_s": median, "times": times, "peak_gb": peak, "ok": ok}


def main(argv=None) -> int:
    ap = forward_args(__doc__.split("\n")[0], DEFAULTS, views_note=", as the paper")
    args, models = parse_forward_args(ap, argv, DEFAULTS, DRY_RUN)
    dev = pick_device(args.dry_run)
    x = random_views(args.views, args.height, args.width, dev)
    rows, bad = [], []
    for name in models:
        try:
            r = measure(name, x, DTYPES[args.dtype], args.runs, args.warmup)
        except torch.cuda.OutOfMemoryError as e:  # a row that does not fit is reported, the others still run
            print(f"{name}: out of memory: {str(e).splitlines()[0]}", flush=True)
            bad.append(name)
            torch.cuda.empty_cache()
            continue
        rows.append(r)
        if not r["ok"]:
            bad.append(name)
        print(f"{name}: {args.views / r['median_s']:.1f} FPS ({r['median_s']:.4f} s per batch)", flush=True)

    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    heads = [
        "model",
        "params (M)",
        "median s / batch",
        f"FPS ({gpu})",
        "paper A100 FPS",
        "ours / paper",
        "peak GPU memory (GB)",
    ]
    body = []
    for r in rows:
        fps = args.views / r["median_s"]
        paper = PAPER_A100_FPS.get(r["model"])
        body.append(
            [
                r["model"],
                f"{r['params_m']:.1f}",
                f"{r['median_s']:.4f}",
                f"{fps:.1f}",
                "" if paper is None else f"{paper:.1f}",
                "" if paper is None else f"{fps / paper:.2f}x",
                "" if dev.type != "cuda" else f"{r['peak_gb']:.2f}",
            ]
        )
    text = "\n".join(
        [
            machine_header(
                f"DA3 throughput, {args.dtype} autocast, {args.width}x{args.height}, S={args.views}",
                [
                    f"- median of {args.runs} timed passes after {args.warmup} warm-up; random weights; "
                    "return_rays=False (as infer); FPS = views / seconds per batch",
                    "- paper: DA3 Table 8, one A100, 32-image scenes at 504x336"
                    + ("" if args.views == 32 and (args.height, args.width) == (336, 504) else " (not this setting)"),
                    *(["- CPU dry run: tiny input, the numbers mean nothing"] if args.dry_run else []),
                    *([f"- failed (out of memory or non-finite depth): {', '.join(bad)}"] if bad else []),
                ],
            ),
            md_table(heads, body),
        ]
    )
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
