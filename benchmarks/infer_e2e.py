"""End to end, images in and numpy out: `da3_splat.model.inference.infer()` vs the official
`DepthAnything3.inference()` on the same real photos and the same (perturbed random) da3-small weights.

    .venv/bin/python benchmarks/infer_e2e.py            # writes benchmarks/results/infer_e2e.md
    .venv/bin/python benchmarks/infer_e2e.py --quick    # 1 run each, printed only

Both get the list of uint8 photos of the mydesk scene (480x270, default process_res 504), pose-free and with
the scene's cameras. The official API as shipped runs its forward under fp16 autocast on CPU; it is timed that
way ("as shipped") and with autocast switched off ("fp32"), which is the same arithmetic as ours. Ours skips
the ray branch it does not return (``return_rays=False``, the default) — a skip of unused work, said here.
Runs alternate between the implementations; medians and ranges over the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, loadavg, machine_header, md_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.model.test_parity_inference import mydesk_views  # noqa: E402
from tests.oracle import build_official, official_api, rel_err, save_hub_layout  # noqa: E402


@contextlib.contextmanager
def autocast_off():
    real = torch.autocast
    torch.autocast = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        torch.autocast = real


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = 1 if args.quick else args.runs

    import tempfile

    from da3_splat import DA3
    from da3_splat.model.inference import infer

    wrapper = build_official("da3-small", seed=21)
    with tempfile.TemporaryDirectory() as tmp:
        ours = DA3.from_pretrained(save_hub_layout(wrapper, Path(tmp), "da3-small"))
    api = official_api(wrapper)
    images, w2c, K = mydesk_views(args.views)
    load_before = loadavg()
    rows = []
    for mode, poses in (("pose-free", (None, None)), ("known poses", (w2c, K))):
        impls = {
            "ours": lambda p=poses: infer(ours, images, *p),
            "official fp32": lambda p=poses: _official(api, images, p, fp32=True),
            "official as shipped (fp16 autocast)": lambda p=poses: _official(api, images, p, fp32=False),
        }
        times = {k: [] for k in impls}
        outs = {name: fn() for name, fn in impls.items()}  # warm-up (allocator, oneDNN kernels)
        for _ in range(runs):
            for name, fn in impls.items():
                t, outs[name] = timed(fn)
                times[name].append(t)
        ours_med = statistics.median(times["ours"])
        for name, ts in times.items():
            med = statistics.median(ts)
            err = rel_err(torch.from_numpy(outs["ours"].depth), torch.from_numpy(outs[name].depth))
            rows.append(
                [mode, name, f"{med:.2f}", f"{min(ts):.2f}-{max(ts):.2f}", f"{med / ours_med:.2f}x", f"{err:.1e}"]
            )
            print(rows[-1], flush=True)
    text = machine_header(
        "End-to-end inference: infer() vs the official inference() API",
        [
            f"- da3-small (perturbed random weights), {args.views} mydesk photos 480x270, process_res 504, "
            f"one warm-up and {runs} alternating runs per implementation",
            f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()}",
            "- ours skips the ray branch it does not return (return_rays=False): unused work, allowed here",
        ],
    )
    text += "\n" + md_table(
        ["input", "implementation", "median (s)", "range (s)", "time / ours", "depth rel. diff to ours"], rows
    )
    if not args.quick:
        (RESULTS / "infer_e2e.md").write_text(text)
    print(text)


def _official(api, images, poses, fp32: bool):
    w2c, K = poses
    with autocast_off() if fp32 else contextlib.nullcontext():
        torch.manual_seed(0)
        return api.inference(images, extrinsics=w2c, intrinsics=K, process_res=504)


if __name__ == "__main__":
    main()
