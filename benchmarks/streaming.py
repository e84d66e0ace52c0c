"""Streaming inference (`da3_splat.streaming`) against one pass on long synthetic trajectories: peak memory,
seconds per frame and pose drift.

    .venv/bin/python benchmarks/streaming.py                                # N = 48, 96, 192 -> results/streaming.md
    .venv/bin/python benchmarks/streaming.py --frames 24 --out /tmp/s.md    # a quick check
    .venv/bin/python benchmarks/streaming.py --frames 300 1000 3000 --one-pass-max 300 --device cuda \\
        --model depth-anything/DA3-LARGE --height 280 --width 504            # the issue's sizes, on a GPU

Each trajectory is one scene of `da3_splat.data.synthetic` rendered with N frames (the path has a fixed length, so
more frames are denser, not longer). Each (N, mode) runs in its own subprocess, so its peak RSS
(`resource.getrusage`, which sees torch's allocations, unlike tracemalloc) is its own; the table gives that peak
and the RSS before inference (imports, model, images), whose difference is what inference added; on CUDA also
`torch.cuda.max_memory_allocated`. Drift against the ground-truth cameras: ATE = RMSE of the camera centres after
one Sim(3) (Umeyama on all centres) over the trajectory extent (the largest centre distance from the mean), and
the mean error of the relative rotation between frames D = min(100, N - 1) apart, in degrees (not scaled to a
common D: over short runs the GT rotation between the ends is not proportional to D).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, ROOT, loadavg, machine_header, md_table

sys.path.insert(0, str(ROOT))
from da3_splat.data.synthetic import TRAJECTORY_KINDS  # noqa: E402
from da3_splat.streaming_align import MAX_RESIDUAL  # noqa: E402

MODES = ("one pass", "streaming", "streaming + loop closure")
HEADERS = ["frames", "mode", "peak RSS GiB", "added by inference GiB", "of which outputs GiB", "working GiB",
           "CUDA peak GiB", "s / frame", "ATE / extent",
           "rot. err deg, frames D apart", "loops used / found"]  # fmt: skip
GIB = 2.0**30


def rss_bytes() -> int:
    """Current resident set size (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def drift(pred_w2c: np.ndarray, gt_w2c: np.ndarray) -> tuple[float, float]:
    """(ATE / extent after one Sim(3), mean relative rotation error in degrees between frames D apart, D)."""
    import torch

    from da3_splat.geometry import as_homogeneous, camera_centers, umeyama

    p = as_homogeneous(torch.from_numpy(np.asarray(pred_w2c, np.float64)))
    g = torch.from_numpy(np.asarray(gt_w2c, np.float64))
    cp, cg = camera_centers(p), camera_centers(g)
    R, t, s = umeyama(cp, cg)
    ate = float(((s * cp @ R.T + t - cg).norm(dim=-1) ** 2).mean().sqrt())
    extent = float((cg - cg.mean(0)).norm(dim=-1).max())
    step = min(100, len(p) - 1)
    if step < 1:
        return ate / extent, float("nan"), step

    def rel(w2c):  # rotation from frame i to frame i + step
        return w2c[step:, :3, :3] @ w2c[:-step, :3, :3].transpose(-1, -2)

    err = rel(p) @ rel(g).transpose(-1, -2)
    cos = err.diagonal(dim1=-2, dim2=-1).sum(-1) - 1
    sin = torch.stack([err[:, 2, 1] - err[:, 1, 2], err[:, 0, 2] - err[:, 2, 0], err[:, 1, 0] - err[:, 0, 1]], -1)
    deg = torch.rad2deg(torch.atan2(sin.norm(dim=-1), cos)).mean()
    return ate / extent, float(deg), step


def child(args) -> None:
    """One (scene, mode) run; prints one JSON line."""
    import torch

    from da3_splat.runtime import load_model, set_pose_solver
    from da3_splat.streaming import infer_streaming

    torch.set_num_threads(args.threads)
    with np.load(args.scene) as z:
        images, gt = list(z["images"]), z["w2c"]
    model = load_model(args.model, args.device, None)
    set_pose_solver(model, args.pose_solver)
    before = rss_bytes()
    t0 = time.perf_counter()
    if args.mode == "one pass":
        pred = model.infer(images)
    else:
        loops = args.mode == "streaming + loop closure"
        gate = {} if args.max_residual is None else {"max_residual": args.max_residual}
        pred = infer_streaming(model, images, args.chunk_size, args.overlap, loop_closure=loops, **gate)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ate, rot, step = drift(pred.extrinsics, gt)
    out = {
        "seconds_per_frame": seconds / len(images),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before": before,
        # what the prediction returns (per-frame maps and images): linear in N whatever the method
        "output_bytes": sum(v.nbytes for v in vars(pred).values() if isinstance(v, np.ndarray)),
        "cuda_peak": torch.cuda.max_memory_allocated() if args.device == "cuda" else None,
        "ate": ate,
        "rot_err_deg": rot,
        "rot_step": step,
        "loops": (pred.extra.get("streaming") or {}).get("loop_closure"),
    }
    print(json.dumps(out))


def run_one(scene: Path, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(scene), "--mode", mode, "--model", args.model]
    cmd += ["--device", args.device, "--threads", str(args.threads), "--chunk-size", str(args.chunk_size)]
    cmd += ["--overlap", str(args.overlap)] + (["--pose-solver", args.pose_solver] if args.pose_solver else [])
    cmd += [] if args.max_residual is None else ["--max-residual", str(args.max_residual)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.timeout} s"}
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or [f"exit {res.returncode}"]
        return {"error": lines[-1][:400]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[48, 96, 192])
    ap.add_argument("--model", default="da3-tiny-synthetic")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--height", type=int, default=126)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--trajectory", choices=TRAJECTORY_KINDS, help="one path kind (default: the generator's mix)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES[:2]))
    ap.add_argument("--pose-solver", choices=["decoder", "matches"], help="pose-free cameras (default: the model's)")
    ap.add_argument(
        "--max-residual",
        type=float,
        help="merge gate: the shared points' disagreement, over the scene, above which a chunk is refused "
        "(default: the library's); the bundled tiny model needs about 0.15 on some paths (results/streaming_gate.md)",
    )
    ap.add_argument("--one-pass-max", type=int, default=None, help="skip one pass above this many frames")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--out", type=Path, default=RESULTS / "streaming.md")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        args.scene = args.child
        return child(args)

    from da3_splat.data.synthetic import SyntheticConfig, render_scene

    load_before = loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            t0 = time.perf_counter()
            kinds = {"trajectories": (args.trajectory,)} if args.trajectory else {}
            scene = render_scene(SyntheticConfig(frames=n, height=args.height, width=args.width, **kinds), args.seed)
            path = Path(tmp) / f"scene_{n}.npz"
            np.savez(path, images=scene.images, w2c=scene.w2c)
            print(f"N={n}: rendered in {time.perf_counter() - t0:.1f} s ({scene.info['trajectory']})", flush=True)
            for mode in args.modes:
                if mode == "one pass" and args.one_pass_max is not None and n > args.one_pass_max:
                    rows.append([n, mode, "skipped (--one-pass-max)", *[""] * 8])
                    continue
                r = run_one(path, mode, args)
                print(f"N={n} {mode}: {r}", flush=True)
                if "error" in r:
                    rows.append([n, mode, f"failed: {r['error']}", *[""] * 8])
                    continue
                cuda = "" if r["cuda_peak"] is None else f"{r['cuda_peak'] / GIB:.2f}"
                rss, added = r["peak_rss"] / GIB, (r["peak_rss"] - r["rss_before"]) / GIB
                rot = f"{r['rot_err_deg']:.2f} (D={r['rot_step']})"
                outputs = r["output_bytes"] / GIB
                lc = r["loops"]
                loops = "" if lc is None else f"{lc['applied']} / {lc['candidates']}"
                rows.append([n, mode, f"{rss:.2f}", f"{added:.2f}", f"{outputs:.2f}", f"{added - outputs:.2f}", cuda,
                             f"{r['seconds_per_frame']:.3f}", f"{r['ate']:.3f}", rot, loops])  # fmt: skip
    cmd = " ".join(["python", "benchmarks/streaming.py", *sys.argv[1:]])
    extra = [f"- load average (1/5/15 min): {load_before} at start, {loadavg()} at end"]
    text = machine_header("Streaming inference vs one pass on long trajectories", extra)
    solver = f" (pose solver: {args.pose_solver})" if args.pose_solver else ""
    gate = (
        ""
        if args.max_residual is None
        else (f"; merge gate {args.max_residual:g} of the scene instead of the library's {MAX_RESIDUAL:g}")
    )
    path = f"{args.trajectory} path" if args.trajectory else "path kind drawn by the generator"
    text += (
        f"\n`{cmd}`: model {args.model}{solver} at {args.width}x{args.height} (its own processing resolution applies), "
        f"streaming in chunks of {args.chunk_size} frames sharing {args.overlap} (`da3_splat.streaming`), one "
        f"synthetic scene (seed {args.seed}, {path}) per N, each run in its own process on {args.device}{gate}.\n\n"
    )
    text += md_table(HEADERS, rows)
    text += (
        "\n'added by inference': peak RSS minus the RSS before inference (imports, model and the input images); "
        "'of which outputs': the arrays the prediction returns (depth, confidence, processed images, cameras), "
        "which grow with N whatever the method; 'working': the rest, what the method itself needs.\n"
    )
    text += (
        "\nATE after one Sim(3) on all camera centres, over the largest centre distance from their mean; rotation "
        "error: mean error of the relative rotation between frames D = min(100, N - 1) apart. With the bundled "
        "tiny model the poses themselves are rough, so drift here mostly measures the model; streaming adds the "
        "chain of chunk alignments. 'loops used / found': revisits verified and put in the pose graph, of the "
        "candidates tried (`--loop-closure`, `da3_splat.streaming_loops`).\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
