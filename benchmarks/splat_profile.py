"""Where `da3-splat splat` spends its time (issue 19, item 2c): the command's library entry (`run_splat`) on 12
evenly spaced frames of the real mydesk capture (480x270) with the bundled model at its default resolution,
stage by stage, for the old defaults (a 90-frame orbit at the processed size, 30 fps) and the new ones, side by
side in one run (runs interleaved, so both see the same machine).

    .venv/bin/python benchmarks/splat_profile.py [--runs 2] [--configs old new] [--out FILE]

The frames are copied to a temporary folder (never into the repo); outputs go to temporary folders too. Stage
times are the command's own (splat.json timings_s) with image preprocessing (resize to the network's
resolution, inside `infer`) timed apart from the network; "other" is the rest of the wall time (path cameras,
summary). CPU s is the process's CPU time over the whole run (ffmpeg included): on a machine shared with other
jobs it moves less than wall time does.
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, loadavg, machine_header, md_table  # benchmarks/ is on sys.path
from rich.console import Console

import da3_splat.model.inference as inference
from da3_splat import BUNDLED_MODEL
from da3_splat.commands.splat import SplatConfig, run_splat

FRAMES = Path("/work/shared/data/mydesk/images_4")
CONFIGS = {
    "old": dict(path_frames=90, video_size=0, fps=30),  # the defaults before issue 19 item 2c
    "new": {},  # SplatConfig's own defaults
}
# (row, timings_s keys summed); "preprocess" is measured here, and taken out of "inference".
STAGES = [
    ("load model", ["load_model"]),
    ("load images", ["load_inputs"]),
    ("preprocess (resize)", ["preprocess"]),
    ("inference (network)", ["inference"]),
    ("build Gaussians", ["build"]),
    ("write images/ + transforms.json", ["write_views"]),
    ("write splat.ply", ["write_ply"]),
    ("preview sheet (render inputs, PSNR/SSIM)", ["preview"]),
    ("path rendering", ["path_render"]),
    ("path frames (PNG)", ["path_write"]),
    ("video encoding", ["video_encode"]),
]


def pick_frames(src: Path, n: int, dst: Path) -> list[str]:
    """Copy n evenly spaced images of src into dst; -> their names."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    idx = sorted({round(i * (len(files) - 1) / max(n - 1, 1)) for i in range(n)})
    dst.mkdir(parents=True)
    for i in idx:
        shutil.copy(files[i], dst / files[i].name)
    return [files[i].name for i in idx]


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(images: Path, out: Path, overrides: dict, model: str) -> dict:
    """One run_splat; -> seconds per stage (STAGES rows, plus 'other' and 'total'), CPU s and the summary."""
    pre = []
    real = inference.preprocess

    def timed(*args, **kw):
        t0 = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            pre.append(time.perf_counter() - t0)

    quiet = Console(file=io.StringIO())
    cfg = SplatConfig(input=images, output=out, model=model, **overrides)
    inference.preprocess = timed
    try:
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        info = run_splat(cfg, console=quiet, out_console=quiet)
        total, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    finally:
        inference.preprocess = real
    t = dict(info["timings_s"], preprocess=sum(pre))
    t["inference"] -= t["preprocess"]
    row = {name: sum(t.get(k, 0.0) for k in keys) for name, keys in STAGES}
    row["other"] = total - sum(row.values())
    row["total"] = total
    return {"stages": row, "cpu": cpu, "info": info}


def _cell(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.2f}", f"{min(values):.2f}–{max(values):.2f}"


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    headers = ["stage"] + [f"{n} {h}" for n in names for h in ("median s", "share", "min–max s")]
    rows = []
    for stage in [s for s, _ in STAGES] + ["other", "total"]:
        row = [stage]
        for n in names:
            vals = [r["stages"][stage] for r in results[n]]
            totals = [r["stages"]["total"] for r in results[n]]
            med, span = _cell(vals)
            share = statistics.median(v / t for v, t in zip(vals, totals))
            row += [f"**{med}**" if stage == "total" else med, f"{100 * share:.0f}%", span]
        rows.append(row)
    cpu = ["CPU s (whole run)"]
    for n in names:
        med, span = _cell([r["cpu"] for r in results[n]])
        cpu += [med, "", span]
    return md_table(headers, rows + [cpu])


def describe(name: str, r: dict) -> str:
    i = r["info"]
    h, w = i["path_size"] or (0, 0)
    fps = CONFIGS[name].get("fps", SplatConfig.fps)
    return (
        f"- {name}: {i['path_frames']}-frame {i['path']} path at {w}x{h}, {fps} fps "
        f"(overrides: {CONFIGS[name] or 'none'}); {i['num_gaussians']:,} Gaussians ({i['source']}) "
        f"from {i['num_views']} views at {i['processed_size'][1]}x{i['processed_size'][0]}"
    )


def code_state() -> str:
    """The commit, and the library files changed since (the renderer may be one of them)."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "da3_splat"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown (no git)"
    files = [line[3:] for line in changed.splitlines()]
    return f"commit {head or '?'}" + (f" + uncommitted changes to {', '.join(files)}" if files else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="runs per configuration (at least 2 for a spread)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--frames", type=Path, default=FRAMES, help="folder of the real scene's images")
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--model", default=BUNDLED_MODEL)
    p.add_argument("--out", type=Path, default=RESULTS / "splat_profile.md")
    a = p.parse_args()

    load_before = loadavg()
    results: dict[str, list[dict]] = {n: [] for n in a.configs}
    with tempfile.TemporaryDirectory() as tmp:
        names = pick_frames(a.frames, a.views, Path(tmp) / "images")
        for run in range(a.runs):
            for n in a.configs:  # interleaved: old, new, old, new, ...
                out = Path(tmp) / f"out_{n}_{run}"
                results[n].append(run_once(Path(tmp) / "images", out, CONFIGS[n], a.model))
                s = results[n][-1]["stages"]
                print(f"run {run + 1} {n}: {s['total']:.1f} s (path rendering {s['path rendering']:.1f} s)", flush=True)
    first = {n: results[n][0] for n in a.configs}
    quality = first[a.configs[0]]["info"]
    mean = statistics.fmean
    extra = [
        f"- `run_splat` (`da3-splat splat IMAGES -o OUT --model {a.model}`), default resolution, "
        f"{len(names)} frames of {a.frames} ({names[0]} ... {names[-1]}), {a.runs} run(s) per configuration, "
        "interleaved, in one process",
        *(describe(n, first[n]) for n in a.configs),
        f"- fit to the inputs (renders at the input cameras vs the photos): PSNR "
        f"{mean(v for v in quality['psnr_input_views_db'] if v is not None):.2f} dB, SSIM "
        f"{mean(v for v in quality['ssim_input_views'] if v is not None):.3f}",
        f"- code: {code_state()}",
        f"- load average before: {load_before}; after: {loadavg()}",
        "",
    ]
    text = machine_header("`da3-splat splat` stage profile (`benchmarks/splat_profile.py`)", extra)
    text += table(results)
    if len(a.configs) == 2:
        o, n = (statistics.median(r["stages"]["total"] for r in results[c]) for c in a.configs)
        text += f"\n{a.configs[0]} / {a.configs[1]} total wall time (medians): {o / n:.1f}x\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
