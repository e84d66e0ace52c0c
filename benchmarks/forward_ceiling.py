"""How far the equal-work forward can go: ours (rays computed) and the official net timed part by part in one process.

    .venv/bin/python benchmarks/forward_ceiling.py            # small/base at S=1,4,8 -> results/forward_ceiling.md
    .venv/bin/python benchmarks/forward_ceiling.py --quick    # da3-small S=1, printed only

Both nets hold the same perturbed random weights. For each (config, S) the two run in turn in the same process
(after a warm-up of each), so load and allocator state hit both alike. Forward hooks time the backbone, the DPT
head and the camera decoder of each; "other" is the rest of the forward (reference-view selection, glue).

The two backbones run the same operators on the same shapes (attention, QKV/MLP GEMMs, LayerNorm), so the backbone
bounds the equal-work speed-up from above: the table gives the speed-up that ours would reach if its head and glue
cost nothing, and the backbone throughput (GFLOP/s: FLOPs counted by torch.utils.flop_counter, plus attention's,
which it misses on CPU) that 1.3x would need given ours' measured head, against this machine's fp32 matmul peak
measured in the same run. Ours is also timed with `DA3.compile_parts()` (torch.compile of the backbone blocks and
the heads' per-chunk pass; a measured opt-in).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from _common import RESULTS, loadavg, machine_header, md_table, official_and_ours
from profile_forward import AttentionFlops, matmul_peak_gflops

HW = (280, 504)
TARGET = 1.3
PARTS = ("backbone", "head", "cam_dec")


class PartTimer:
    """Adds each hooked module's forward time to ``self.times[label]``."""

    def __init__(self):
        self.times: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        self._handles = []

    def watch(self, label: str, module: torch.nn.Module) -> None:
        self._handles.append(
            module.register_forward_pre_hook(lambda m, a: self._start.__setitem__(label, time.perf_counter()))
        )
        self._handles.append(
            module.register_forward_hook(
                lambda m, a, o: self.times.__setitem__(
                    label, self.times[label] + time.perf_counter() - self._start[label]
                )
            )
        )

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def med(v: list[float]) -> float:
    return statistics.median(v)


def span(v: list[float]) -> str:
    return f"{min(v):.3f}-{max(v):.3f}"


def measure(official, ours, S: int, runs: int, compiled: bool) -> dict:
    x = torch.randn(1, S, 3, *HW, generator=torch.Generator().manual_seed(0))
    timer = PartTimer()
    for p in PARTS:
        timer.watch(f"ours.{p}", getattr(ours, p))
        timer.watch(f"official.{p}", getattr(official, p))
    nets = {"ours": lambda: ours(x, return_rays=True), "official": lambda: official(x)}
    totals, parts = defaultdict(list), defaultdict(list)
    with torch.inference_mode():
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, AttentionFlops() as attention:
            ours(x, return_rays=True)
        backbone_flops = sum(counter.get_flop_counts()["DA3.backbone"].values()) + attention.flops
        for f in nets.values():
            f()
        for _ in range(runs):
            for name, f in nets.items():
                timer.times.clear()
                t0 = time.perf_counter()
                f()
                totals[name].append(time.perf_counter() - t0)
                for label, t in timer.times.items():
                    parts[label].append(t)
                # the rest of the forward, pass by pass (medians of the parts need not sum to the total's)
                parts[f"{name}.other"].append(totals[name][-1] - sum(timer.times.values()))
        ref = ours(x, return_rays=True)
        if compiled:
            timer.remove()  # hooks inside a compiled module would break its graph
            torch._dynamo.reset()  # each row compiles afresh
            ours.compile_parts()
            t0 = time.perf_counter()
            out = ours(x, return_rays=True)
            totals["compile"].append(time.perf_counter() - t0)
            for _ in range(runs):  # alternating with the official net again
                t0 = time.perf_counter()
                out = ours(x, return_rays=True)
                totals["ours compiled"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                official(x)
                totals["official beside compiled"].append(time.perf_counter() - t0)
            totals["compiled rel err"].append(
                max(float((out[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ("depth", "ray", "extrinsics"))
            )
    return {"totals": dict(totals), "parts": dict(parts), "backbone_flops": backbone_flops}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (it compiles per S)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("da3-small", 1)] if args.quick else [(n, s) for n in ("da3-small", "da3-base") for s in (1, 4, 8)]
    load_before = loadavg()
    peaks = [matmul_peak_gflops()]
    rows, part_rows, bounds = [], [], []
    for name, S in cases:
        peaks.append(matmul_peak_gflops())  # before every row: the best seen is the machine's peak
        wrapper, ours = official_and_ours(name)
        r = measure(wrapper.model, ours, S, 1 if args.quick else args.runs, not args.no_compile)
        tot, parts = r["totals"], r["parts"]
        off, our = med(tot["official"]), med(tot["ours"])
        row = [name, S, f"{off:.3f} ({span(tot['official'])})", f"{our:.3f} ({span(tot['ours'])})", f"{off / our:.3f}x"]
        if "ours compiled" in tot:
            comp, beside = med(tot["ours compiled"]), med(tot["official beside compiled"])
            row += [
                f"{comp:.3f} ({span(tot['ours compiled'])})",
                f"{beside:.3f} ({span(tot['official beside compiled'])})",
                f"{beside / comp:.3f}x",
                f"{tot['compiled rel err'][0]:.1e}",
            ]
        else:
            row += ["skipped", "", "", ""]
        rows.append(row)
        pm = {label: med(v) for label, v in parts.items()}
        for impl, total in (("official", off), ("ours", our)):
            inside = [pm.get(f"{impl}.{p}", 0.0) for p in (*PARTS, "other")]
            part_rows.append([name, S, impl, f"{total:.3f}", *(f"{t:.3f}" for t in inside)])
        backbone = pm["ours.backbone"]
        rest = our - backbone  # ours' head, camera decoder and glue
        budget = off / TARGET - rest  # backbone seconds that 1.3x would leave
        gflop = r["backbone_flops"] / 1e9
        bounds.append((name, S, pm["official.backbone"], backbone, off, gflop, budget))
        print(rows[-1], part_rows[-2:], bounds[-1], flush=True)
        del wrapper, ours
    peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    bound_rows = []
    for name, S, official_backbone, backbone, off, gflop, budget in bounds:
        achieved = gflop / backbone
        needed = f"{gflop / budget:.0f} ({100 * gflop / budget / peak:.0f}%)" if budget > 0 else "impossible"
        bound_rows.append(
            [
                name,
                S,
                f"{official_backbone:.3f}",
                f"{backbone:.3f}",
                f"{off / backbone:.3f}x",
                f"{gflop:.0f}",
                f"{achieved:.0f} ({100 * achieved / peak:.0f}%)",
                needed,
            ]
        )
    text = machine_header(
        "Equal-work forward: where the time goes, and the ceiling the shared backbone sets",
        [
            f"- input {HW[0]}x{HW[1]}, fp32, inference_mode, perturbed random weights shared by both nets; "
            f"ours = `model(x, return_rays=True)` (the official net's work), official = `wrapper.model(x)`",
            f"- one process per run, the two nets alternating pass by pass; {args.runs} timed passes each after a "
            "warm-up; median (range)",
            f"- load average (1/5/15 min) before: {load_before}; after: {loadavg()}",
            f"- fp32 matmul peak (square 1024 and 2048 GEMMs, best of 7 each, measured before, between and after "
            f"the rows): {peak:.1f} GFLOP/s best, {min(peaks):.1f} lowest",
        ],
    )
    text += "\n## Forward, equal work\n\n" + md_table(
        [
            "config",
            "S",
            "official s",
            "ours+rays s",
            "equal-work speed-up",
            "ours+rays compiled s",
            "official s, alternating with compiled",
            "compiled speed-up",
            "compiled max rel err",
        ],
        rows,
    )
    text += "\n## Time by part (median s)\n\n" + md_table(
        ["config", "S", "net", "forward", "backbone", "DPT head", "camera decoder", "other"], part_rows
    )
    text += (
        "\n## The backbone's ceiling\n\n"
        "Both backbones run the same operators on the same shapes. 'Speed-up with a free head' is the official "
        f"forward over ours' backbone alone. The last column is the backbone throughput that {TARGET}x would need, "
        f"given ours' measured head and glue, against the fp32 matmul peak of {peak:.0f} GFLOP/s measured above.\n\n"
    )
    text += md_table(
        [
            "config",
            "S",
            "official backbone s",
            "ours backbone s",
            "speed-up with a free head",
            "backbone GFLOP",
            "ours backbone GFLOP/s (of peak)",
            f"GFLOP/s (of peak) needed for {TARGET}x",
        ],
        bound_rows,
    )
    if not args.quick:
        (RESULTS / "forward_ceiling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
