"""Where the forward's time goes: torch.profiler over ours (rays computed, the official net's work) on CPU fp32.

    .venv/bin/python benchmarks/profile_forward.py            # small/base at S=1,4,8; writes results/profile_forward.md
    .venv/bin/python benchmarks/profile_forward.py --quick    # da3-small S=1 only, printed

Operator self-times are summed into groups (attention, matmul, convolution, normalisation, upsampling,
elementwise, copies). A roofline row sets the forward's achieved GFLOP/s (FLOPs counted by
torch.utils.flop_counter, plus attention's, which it does not count on CPU) against this machine's fp32 matmul
peak measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _common import RESULTS, loadavg, machine_header, md_table, official_and_ours

HW = (280, 504)
GROUPS = {
    "attention": ("scaled_dot_product", "_flash_attention"),
    "matmul (linear)": ("addmm", "aten::mm", "aten::bmm", "aten::matmul"),
    "convolution": ("convolution",),
    "normalisation": ("layer_norm",),
    "upsampling": ("upsample",),
    "elementwise": (
        "aten::add",
        "aten::mul",
        "aten::gelu",
        "aten::silu",
        "clamp",
        "aten::relu",
        "aten::neg",
        "aten::sin",
        "aten::cos",
        "aten::exp",
        "aten::div",
        "aten::sub",
        "aten::sigmoid",
    ),
    "copies (copy/cat/clone/gather/index)": ("copy_", "aten::cat", "aten::clone", "gather", "index", "flip"),
}


def group_of(op: str) -> str:
    for group, keys in GROUPS.items():
        if any(k in op for k in keys):
            return group
    return "other"


def matmul_peak_gflops(sizes: tuple[int, ...] = (1024, 2048), runs: int = 7) -> float:
    """The best fp32 GEMM throughput over square sizes (best of ``runs`` each): the machine's practical peak."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(runs):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


class AttentionFlops:
    """Counts scaled_dot_product_attention FLOPs (4 * B * heads * Nq * Nk * head_dim), which
    torch.utils.flop_counter does not count for the CPU flash kernel, while the context is open."""

    def __enter__(self):
        self.flops = 0
        self._sdpa = F.scaled_dot_product_attention

        def counted(q, k, v, *a, **kw):
            self.flops += 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
            return self._sdpa(q, k, v, *a, **kw)

        F.scaled_dot_product_attention = counted
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._sdpa


def profile(model, S: int, runs: int) -> dict:
    x = torch.randn(1, S, 3, *HW, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(x, return_rays=True)  # warm-up
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, AttentionFlops() as attention:
            model(x, return_rays=True)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x, return_rays=True)
            times.append(time.perf_counter() - t0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x, return_rays=True)
    groups: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        groups[group_of(ev.key)] += ev.self_cpu_time_total / 1e6
    return {"times": times, "flops": counter.get_total_flops() + attention.flops, "groups": dict(groups)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["da3-small", "da3-base"])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("da3-small", 1)] if args.quick else [(n, s) for n in args.models for s in args.views]
    load_before = loadavg()
    peaks = [matmul_peak_gflops()]
    rows, share_rows, models, achieved = [], [], {}, []
    for name, S in cases:
        peaks.append(matmul_peak_gflops())  # before every row: the best seen is the machine's peak
        if name not in models:
            models.clear()
            models[name] = official_and_ours(name, keep_official=False)[1]
        r = profile(models[name], S, 1 if args.quick else args.runs)
        med = statistics.median(r["times"])
        gflops = r["flops"] / med / 1e9
        achieved.append(gflops)
        rows.append(
            [
                name,
                S,
                f"{med:.3f}",
                f"{min(r['times']):.3f}-{max(r['times']):.3f}",
                f"{r['flops'] / 1e9:.1f}",
                f"{gflops:.1f}",
            ]
        )
        total = sum(r["groups"].values())
        share_rows.append([name, S] + [f"{100 * r['groups'].get(g, 0.0) / total:.1f}%" for g in [*GROUPS, "other"]])
        print(rows[-1], share_rows[-1], flush=True)
    peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    for row, gflops in zip(rows, achieved):
        row.append(f"{100 * gflops / peak:.0f}%")
    text = machine_header(
        "Forward profile: ours with rays (the official net's work), CPU fp32",
        [
            f"- input {HW[0]}x{HW[1]}, random weights, `model(x, return_rays=True)` under inference_mode; "
            f"median and range of {args.runs} timed passes after one warm-up; groups from one profiled pass",
            f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()}",
            f"- fp32 matmul peak (square 1024 and 2048 GEMMs, best of 7 each, measured before, between and after "
            f"the rows): {peak:.1f} GFLOP/s best, {min(peaks):.1f} lowest",
        ],
    )
    text += "\n## Time and roofline\n\n" + md_table(
        ["model", "S", "forward median (s)", "range (s)", "GFLOP", "achieved GFLOP/s", "of matmul peak"], rows
    )
    text += "\n## Share of operator self-time by group\n\n" + md_table(["model", "S", *GROUPS, "other"], share_rows)
    if not args.quick:
        (RESULTS / "profile_forward.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
