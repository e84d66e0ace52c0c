"""The forward-only half of benchmarks/render.py: frame rate of the renderer without autograd at 480x270.

Previews and viewers take the renderer's forward-only path (`rendering/fast.py`), compositing with the compiled
kernel (`rendering/composite.c`) where it builds and with torch (`fast_composite.py`) elsewhere; each case times
both against the differentiable path (`cpu.FORWARD_ONLY = False`), each in its own process. Run through
`benchmarks/render.py --forward`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from render import H, W, build_scene, cpu_seconds, intrinsics, machine

from da3_splat.gaussians import Gaussians
from da3_splat.rendering import render

RENDER_SCRIPT = str(Path(__file__).with_name("render.py"))  # its --forward-case runs one case of this file

# Forward only: render size, SH degree, and scenes (label, views, source height, source width): the base scene, and
# about 1M Gaussians from the same four views at 2.7x the source resolution.
FWD_W, FWD_H, FWD_SH = 480, 270, 1
FWD_CASES = [("140k", 4, H, W), ("1M", 4, 375, 675)]
FWD_BAR_FPS = 10.0  # the 141k case
# path -> (cpu.FORWARD_ONLY, DA3_SPLAT_NATIVE); "forward-only C" is the default where a C compiler is found
PATHS = {"differentiable": (False, "0"), "forward-only torch": (True, "0"), "forward-only C": (True, "1")}
SECTION = ("<!-- forward-only:start -->", "<!-- forward-only:end -->")


def forward_scene(views: int, h: int, w: int, seed: int = 0):
    """`build_scene` with SH degree 1 (the source colours plus small random view-dependent terms), seen from the
    first source view at FWD_W x FWD_H with the same field of view."""
    gaussians, viewmats, _ = build_scene(views, h, w, seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = gaussians.num_gaussians
    sh = torch.cat([gaussians.sh, 0.1 * torch.randn(n, 3, 3, generator=g)], 1)
    g = Gaussians(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, sh)
    return g, viewmats, intrinsics(FWD_H, FWD_W)[None]


def run_forward_case(index: int, path: str, repeats: int, threads: int) -> dict:
    """One path on one scene, alone in its process (the other path's allocations would change this one's):
    one warm-up frame, then `repeats` timed frames. The forward-only process also renders one differentiable-path
    frame at the end, to compare the images."""
    from da3_splat.rendering import cpu

    torch.set_num_threads(threads)
    label, views, h, w = FWD_CASES[index]
    gaussians, viewmats, Ks = forward_scene(views, h, w)

    def frame(forward_only: bool):
        cpu.FORWARD_ONLY = forward_only
        with torch.no_grad():
            return render(gaussians, viewmats, Ks, FWD_W, FWD_H, sh_degree=FWD_SH, mode="RGB")

    forward_only, os.environ["DA3_SPLAT_NATIVE"] = PATHS[path]
    if path == "forward-only C":
        from da3_splat.rendering import native

        assert native.library() is not None, "the compiled renderer did not build"
    image = frame(forward_only)  # warm-up
    times, (busy0, own0) = [], cpu_seconds()
    for _ in range(repeats):
        t0 = time.perf_counter()
        frame(forward_only)
        times.append(time.perf_counter() - t0)
    busy1, own1 = cpu_seconds()
    out = {
        "label": label,
        "n": gaussians.num_gaussians,
        "source": f"{views} x {h}x{w}",
        "path": path,
        "threads": threads,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "load": os.getloadavg()[0],
        "foreign": max(0.0, (busy1 - busy0) - (own1 - own0)) / sum(times),
    }
    if forward_only:
        ref = frame(False)
        diff = {k: (getattr(image, k) - getattr(ref, k)).abs() for k in ("colors", "alpha")}
        out["max_diff"] = {k: float(v.max()) for k, v in diff.items()}
        out["pixels_over_1e-5"] = int(((diff["colors"] > 1e-5).any(-1, keepdim=True) | (diff["alpha"] > 1e-5)).sum())
    return out


def forward_section(repeats: int, threads: list[int]) -> list[str]:
    """Run the forward-only cases (fresh process each, per thread count) and return their Markdown section."""
    load_before = os.getloadavg()
    rows = []
    for n_threads in threads:
        for i in range(len(FWD_CASES)):
            for path in PATHS:
                cmd = [
                    sys.executable,
                    RENDER_SCRIPT,
                    "--forward-case",
                    str(i),
                    "--path",
                    path,
                    "--repeats",
                    str(repeats),
                ]
                res = subprocess.run(cmd + ["--threads", str(n_threads)], capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    rows.append({"label": FWD_CASES[i][0], "path": path, "error": res.stderr.strip().splitlines()[-1]})
                else:
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    lines = [
        SECTION[0],
        f"## Forward only (no autograd): {FWD_W}x{FWD_H}, SH degree {FWD_SH}",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}",
        (
            f"- Load average (1, 5, 15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
            f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}. 'foreign CPU': cores other processes "
            "took during the timed frames. Two threads suffer most from them: every parallel op waits for its "
            "slower thread, and OpenMP's spinning thread takes the core the other one needs. "
            + (
                f"Run at niceness {os.nice(0)}, so that the other jobs on this shared machine yield the cores."
                if os.nice(0) < 0
                else "Run at normal priority."
            )
        ),
        (
            f"- `render(..., mode='RGB')` under `torch.no_grad()` from the first source view's pose at {FWD_W}x{FWD_H} "
            "(same 60 degree field of view); SH degree 1 = the source colours plus random degree-1 terms. "
            f"Each path and case in its own fresh process, one after the other: one warm-up frame, then {repeats} "
            "timed frames; wall-clock time per frame."
        ),
        (
            "- Paths: *differentiable* is the renderer as for training (`cpu.FORWARD_ONLY = False`: projection, SH "
            "and `_Composite`); *forward-only torch* is what `render` takes without autograd where no C compiler "
            "is found (`rendering/fast.py`, `fast_composite.py`); *forward-only C* is its default, the same "
            "projection and SH with the compiled compositor (`rendering/composite.c`, built by `native.py`). "
            "Max abs diff: against the differentiable path's image."
        ),
        "",
        "| case | source maps | Gaussians | threads | path | median | min | max | frames/s (median) | speed-up | "
        "max abs diff colour / alpha | pixels > 1e-5 | load (1 min) | foreign CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    before = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed ({r['path']}): {r['error']} ||||||||||||")
            continue
        fwd = r["path"] != "differentiable"
        if not fwd:
            before[r["label"], r["threads"]] = r["median_s"]
        old = before.get((r["label"], r["threads"]))
        speed_up = f"{old / r['median_s']:.1f}x" if fwd and old else ("1.0x" if not fwd else "")
        diff = (
            f"{r['max_diff']['colors']:.1e} / {r['max_diff']['alpha']:.1e} | {r['pixels_over_1e-5']} of {FWD_W * FWD_H:,}"
            if fwd
            else " | "
        )
        lines.append(
            f"| {r['label']} | {r['source']} | {r['n']:,} | {r['threads']} | {r['path']} | {_ms(r['median_s'])} | "
            f"{_ms(r['min_s'])} | {_ms(r['max_s'])} | {1 / r['median_s']:.1f} | {speed_up} | {diff} | "
            f"{r['load']:.2f} | {r['foreign']:.2f} |"
        )
    base = next(
        (r for r in rows if r["label"] == "140k" and r.get("threads") == 2 and r.get("path") == "forward-only C"),
        None,
    )
    if base is not None and "error" not in base:
        t = base["median_s"]
        verdict = "met" if 1 / t >= FWD_BAR_FPS else "NOT met"
        lines += [
            "",
            f"- Bar: 141k forward-only (C, the default) at {FWD_W}x{FWD_H}, SH degree {FWD_SH}, 2 threads, at least "
            f"{FWD_BAR_FPS:.0f} frames/s: median {_ms(t)} = {1 / t:.1f} frames/s, **{verdict}**",
        ]
    lines += [
        "",
        "Notes: the C compositor bins Gaussians into 16-px tiles by a counting sort over the depth order and",
        "composites each tile in one thread, Gaussian by Gaussian over its 1/255 pixel box, a tile row at a time as",
        "one 16-lane vector (float32), skipping rows whose pixels have all stopped; threads take tiles from a shared",
        "counter. At 1M Gaussians projection and SH colours (torch, shared by both forward-only paths) take most of",
        "the frame. The torch compositor composites the",
        "same (sub-tile, Gaussian) entries with the same rules, as dense",
        "(sub-tiles, pixels, entries) blocks: alpha in log2 space with one exp2, transmittance a cumulative product,",
        "colours a batched matrix product; Gaussians come in two front-to-back passes, the second leaving out those",
        "whose footprint lies on stopped sub-tiles, and each footprint row keeps only the sub-tiles its 1/255 ellipse",
        "reaches. Its projection is elementwise (the same formulas, rounded differently in the last bits): the few",
        "pixels above 1e-5 are Gaussians that float32 rounding puts on the other side of the 1/255 alpha cut-off or",
        "of the transmittance stop.",
        SECTION[1],
    ]
    return lines


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
