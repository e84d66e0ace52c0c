"""Ray-pose solver speed: the exact (official-faithful) solver vs the fast default, same inputs, same seed.

    .venv/bin/python benchmarks/ray_pose.py            # writes benchmarks/results/ray_pose.md (~3 min, 2 cores)
    .venv/bin/python benchmarks/ray_pose.py --views 1 --repeats 2 --out /tmp/ray_pose.md   # smoke check

Inputs are da3-small's ray maps at a 280x504 network input (160x288 pixels per view) for S = 1, 4 and 8 views:
rays of random pinhole cameras with Gaussian noise, a fraction replaced by random rays (outliers), and
head-like confidences (exp(N(0, 1)) + 1). Each repeat runs both solvers after the same torch.manual_seed, in
alternating order so that drifting load hits both alike; one one-view warm-up of each comes first. The
difference column is max|fast - exact| / max|exact| over all views, for extrinsics and intrinsics.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import RESULTS, loadavg, machine_header, md_table
from _measure import cpu_jiffies

from da3_splat.model.ray_pose import cameras_from_rays
from tests.oracle import rel_err

NET_H, NET_W = 280, 504  # da3-small's network input
MAP_H, MAP_W = 160, 288  # its ray map (8/14 of the input)
NOISE, OUTLIERS = 0.01, 0.2
QUIET = 0.10  # most CPU share other processes may take for a measurement to count as undisturbed


def ray_maps(views: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ray (1, S, h, w, 6), conf (1, S, h, w)) of random cameras: rotations up to ~30 deg, 50-90 deg fov."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(views, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = 0.5 * torch.rand(views, 1, 1, generator=g, dtype=torch.float64)
    skew = torch.zeros(views, 3, 3, dtype=torch.float64)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    skew = skew - skew.mT
    rot = torch.eye(3, dtype=torch.float64) + angle.sin() * skew + (1 - angle.cos()) * skew @ skew
    fx = NET_W / 2 / torch.tan(torch.deg2rad(50 + 40 * torch.rand(views, generator=g, dtype=torch.float64)) / 2)
    u = (torch.arange(MAP_W, dtype=torch.float64) + 0.5) * NET_W / MAP_W
    v = (torch.arange(MAP_H, dtype=torch.float64) + 0.5) * NET_H / MAP_H
    x = (u - NET_W / 2).view(1, 1, -1) / fx.view(-1, 1, 1)
    y = (v - NET_H / 2).view(1, -1, 1) / fx.view(-1, 1, 1)
    cam = torch.stack(torch.broadcast_tensors(x, y, torch.ones_like(x)), dim=-1)  # (S, h, w, 3)
    dirs = torch.einsum("sij,shwj->shwi", rot, cam) * (0.5 + torch.rand(views, MAP_H, MAP_W, 1, generator=g))
    centre = torch.randn(views, 1, 1, 3, generator=g, dtype=torch.float64).expand_as(dirs)
    ray = torch.cat([dirs, centre], dim=-1)
    ray = ray + NOISE * torch.randn(ray.shape, generator=g, dtype=torch.float64)
    bad = torch.rand(ray.shape[:-1], generator=g) < OUTLIERS
    ray[bad] = torch.randn(int(bad.sum()), 6, generator=g, dtype=torch.float64)
    conf = torch.randn(views, MAP_H, MAP_W, generator=g).exp() + 1.0
    return ray.float()[None], conf[None]


def solve(ray: torch.Tensor, conf: torch.Tensor, exact: bool) -> tuple[float, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cams = cameras_from_rays(ray, conf, NET_H, NET_W, exact=exact)
    return time.perf_counter() - t0, cams


def wait_quiet(max_foreign: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until other processes use at most max_foreign of the machine over 3 s."""
    t0 = time.time()
    while True:
        a = cpu_jiffies()
        time.sleep(3)
        b = cpu_jiffies()
        busy = max(0, (b[0] - a[0]) - (b[2] - a[2])) / max(1, b[1] - a[1])
        if busy <= max_foreign or time.time() - t0 > max_wait_s:
            return busy


def measure(views: int, repeats: int) -> dict:
    ray, conf = ray_maps(views)
    solve(ray[:, :1], conf[:, :1], True)  # warm-up: LAPACK / MKL initialisation, allocator
    solve(ray[:, :1], conf[:, :1], False)
    times: dict[bool, list[float]] = {True: [], False: []}
    cams = {}
    j0 = cpu_jiffies()
    for r in range(repeats):
        for exact in (True, False) if r % 2 == 0 else (False, True):
            dt, cams[exact] = solve(ray, conf, exact)
            times[exact].append(dt)
    j1 = cpu_jiffies()
    foreign = max(0.0, (j1[0] - j0[0]) - (j1[2] - j0[2])) / max(1, j1[1] - j0[1])
    return {
        "views": views,
        "exact": times[True],
        "fast": times[False],
        "err_ext": rel_err(cams[False][0], cams[True][0]),
        "err_ixt": rel_err(cams[False][1], cams[True][1]),
        "foreign": foreign,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", default="1,4,8", help="comma-separated S values")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_pose.md")
    ap.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for a quiet machine per S")
    ap.add_argument("--retries", type=int, default=2, help="reruns of an S whose runs other processes disturbed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load_before = loadavg()
    rows, results = [], []
    for views in map(int, args.views.split(",")):
        res = None
        for _ in range(1 + args.retries):  # keep the least disturbed attempt
            wait_quiet(QUIET, args.max_wait)
            attempt = measure(views, args.repeats)
            if res is None or attempt["foreign"] < res["foreign"]:
                res = attempt
            if res["foreign"] <= QUIET:
                break
            print(f"  S={views}: other processes took {100 * attempt['foreign']:.0f}% of the CPU", flush=True)
        results.append(res)
        ex, fa = statistics.median(res["exact"]), statistics.median(res["fast"])
        rows.append(
            [
                views,
                f"{ex:.2f} s ({min(res['exact']):.2f}–{max(res['exact']):.2f})",
                f"{1e3 * fa:.0f} ms ({1e3 * min(res['fast']):.0f}–{1e3 * max(res['fast']):.0f})",
                f"{1e3 * ex / views:.0f} / {1e3 * fa / views:.1f} ms",
                f"**{ex / fa:.0f}x**",
                f"{res['err_ext']:.1e} / {res['err_ixt']:.1e}",
                f"{100 * res['foreign']:.0f}%",
            ]
        )
        print(rows[-1], flush=True)
    worst = max(max(r["err_ext"], r["err_ixt"]) for r in results)
    slowest = min(statistics.median(r["exact"]) / statistics.median(r["fast"]) for r in results)

    header = machine_header(
        "Ray-pose solver: exact vs fast (`benchmarks/ray_pose.py`)",
        [
            f"- load average (1 / 5 / 15 min) before: {load_before}; after: {loadavg()}",
            f"- input: da3-small ray maps for a {NET_H}x{NET_W} network input ({MAP_H}x{MAP_W} = "
            f"{MAP_H * MAP_W} rays per view), ray noise {NOISE}, {100 * OUTLIERS:.0f}% outlier rays, "
            f"{args.repeats} timed repeats per solver after a one-view warm-up, torch.manual_seed(0) before each",
        ],
    )
    table = md_table(
        [
            "views S",
            "exact: median (min–max)",
            "fast: median (min–max)",
            "per view exact / fast",
            "speed-up (medians)",
            "max rel. diff extrinsics / intrinsics",
            "foreign CPU",
        ],
        rows,
    )
    verdict = (
        f"- bars: speed-up >= 10x: lowest {slowest:.0f}x, **{'met' if slowest >= 10 else 'NOT met'}**; "
        f"cameras within 1e-4 relative: worst {worst:.1e}, **{'met' if worst <= 1e-4 else 'NOT met'}**"
    )
    notes = [
        "",
        verdict,
        "",
        "Exact: the official solver's arithmetic (float32 full SVD of the 2N x 9 design matrix, whose U is",
        "2N x 2N, for the refit on up to 8000 inliers; one batched projection of all hypotheses). Fast: the same",
        "RNG draws, hypotheses and RANSAC inliers (the scoring repeats the exact roundings in small serial steps),",
        "and the refit's null vector as the smallest eigenvector of the 9 x 9 normal matrix in float64.",
        "'foreign CPU' is the share of the machine other processes used during the timed runs: each S starts once",
        "they use at most 10% for 3 s (or after --max-wait) and is rerun up to --retries times when they took",
        "more; the least disturbed attempt is shown. Timings with much foreign CPU are inflated.",
    ]
    text = header + "\n" + table + "\n".join(notes) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
