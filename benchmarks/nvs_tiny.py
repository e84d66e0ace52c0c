"""Feed-forward novel-view synthesis of the bundled `da3-tiny-synthetic` on held-out synthetic scenes (issue 5).

    python benchmarks/nvs_tiny.py [--scenes data/synthetic/val] [--model da3-tiny-synthetic] [--max-scenes 20]

One run, side by side, on the same scenes, views and resolution (`da3-splat eval`: each scene's eval_index.json,
every 8th frame a target, 4 farthest-point context views, 126x224):
- the trained model's NVS head (posed: GT context cameras; pose-free: predicted cameras aligned to the GT ones),
- the head-free Gaussians built from the trained model's own depth (one per pixel, image colour),
- for a plane-sweep head, also the head-free Gaussians at the plane-swept depth: the non-learned part on its own,
- the untrained model: the same architecture (NVS head included) with random weights,
plus depth AbsRel / delta<1.25 (median-aligned) and the pose-free cameras' pairwise errors with AUC of the trained and
untrained model against the constant-depth baseline, and the training time of both stages when their run folders
are given. Writes benchmarks/results/nvs_tiny.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from _common import RESULTS, loadavg, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

from da3_splat.commands.eval import EvalConfig, run_eval
from da3_splat.model import DA3

BAR_DB = 2.0
SWEPT_BAR_DB = 1.0
ABS_REL_BAR, ROTATION_BAR, TRANSLATION_BAR = 0.15, 5.0, 15.0  # issue 16, held-out synthetic scenes


def _num(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def untrained_copy(model_src: str, folder: Path, seed: int = 0) -> Path:
    """The same architecture as ``model_src`` (NVS head included) with fresh random weights, saved to ``folder``."""
    trained = DA3.from_pretrained(model_src)
    torch.manual_seed(seed)
    DA3(trained.config).save_pretrained(folder, overwrite=True)
    return folder


def training_rows(runs: list[Path]) -> list[list]:
    rows = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())
        cpu = summary.get("cpu_seconds")
        rows.append(
            [
                run.name,
                config["train"],
                summary["steps"],
                f"{summary['seconds'] / 60:.1f}",
                "n/a" if cpu is None else f"{cpu / 60:.1f}",
            ]
        )
    return rows


def strongest(res: dict, key: str) -> tuple[dict, str]:
    """The better (PSNR) of a head-free baseline with the confidence as opacity and with every splat opaque."""
    options = [(res[k], k) for k in (key, f"{key}-opaque") if k in res]
    return max(options, key=lambda o: o[0]["psnr"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--model", default="da3-tiny-synthetic")
    p.add_argument("--max-scenes", type=int, default=20)
    p.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        default=[Path("outputs/tiny-geometry"), Path("outputs/tiny-geometry-finish"), Path("outputs/tiny-nvs")],
        help="training run folders whose summary.json gives the training time",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "nvs_tiny.md")
    a = p.parse_args()
    if not a.scenes.is_dir():
        raise SystemExit(f"error: {a.scenes} not found; `make tiny-model` generates the held-out scenes")

    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="nvs_tiny_"))
    try:
        common = dict(scenes=(a.scenes,), max_scenes=a.max_scenes, device="cpu", overwrite=True)
        trained = run_eval(EvalConfig(output=tmp / "trained", model=a.model, **common))
        random_src = str(untrained_copy(a.model, tmp / "untrained-model"))
        untrained = run_eval(EvalConfig(output=tmp / "untrained", model=random_src, baseline=False, **common))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows, checks = [], []
    for mode in trained["results"]:
        res, base = trained["results"][mode], untrained["results"][mode]["nvs-head"]
        methods = [("trained NVS head", res["nvs-head"])]
        for key, label in (
            ("head-free", "from its own depth"),
            ("head-free-swept", "from its plane-swept depth (no head)"),
        ):
            if key in res:  # -swept: a plane-sweep head, also what the non-learned sweep gives on its own
                methods.append((f"head-free {label}", res[key]))
                if f"{key}-opaque" in res:
                    methods.append((f"head-free {label}, every splat opaque", res[f"{key}-opaque"]))
        for label, r in methods + [("untrained (random weights)", base)]:
            rows.append(
                [
                    mode,
                    label,
                    f"{r['psnr']:.2f}",
                    f"{r['ssim']:.3f}",
                    f"{r['gaussians']:.0f}",
                    f"{r['seconds_per_scene']:.2f}",
                ]
            )
        # The bars are judged against the stronger of the two opacity maps of each head-free baseline.
        hf, hf_label = strongest(res, "head-free")
        for label, other in ((hf_label, hf), ("untrained", base)):
            gain = res["nvs-head"]["psnr"] - other["psnr"]
            checks.append(
                f"- {mode}: trained NVS head - {label} = {gain:+.2f} dB "
                f"(bar +{BAR_DB:.1f} dB: {'**met**' if gain >= BAR_DB else '**not met**'})"
            )
        if "head-free-swept" in res:
            swept, swept_label = strongest(res, "head-free-swept")
            gain = res["nvs-head"]["psnr"] - swept["psnr"]
            checks.append(
                f"- {mode}: trained NVS head - {swept_label} = {gain:+.2f} dB (what the "
                f"learned head adds over the non-learned sweep it reads; bar +{SWEPT_BAR_DB:.1f} dB: "
                f"{_met(gain >= SWEPT_BAR_DB)})"
            )
    geometry_rows = []
    for mode, geo in trained["geometry"].items():
        for label, g in (("trained", geo), ("untrained (random weights)", untrained["geometry"][mode])):
            d, pose = g["depth"] or {}, g["pose"] or {}
            geometry_rows.append(
                [
                    mode,
                    label,
                    _num(d.get("abs_rel")),
                    _num(d.get("delta1")),
                    _num(pose.get("rotation_median"), ".2f"),
                    _num(pose.get("translation_median"), ".2f"),
                    _num(pose.get("auc3")),
                    _num(pose.get("auc5")),
                    _num(pose.get("auc15")),
                ]
            )
    d = trained["depth"]
    geometry_rows.append(["", "constant depth (GT median)", _num(d["abs_rel_constant"]), "", "", "", "", "", ""])
    for mode, geo in trained["geometry"].items():
        rel = geo["depth"]["abs_rel"]
        checks.append(f"- {mode}: depth AbsRel {rel:.3f} (bar <= {ABS_REL_BAR}: {_met(rel <= ABS_REL_BAR)})")
        if geo["pose"]:
            rot, trans = geo["pose"]["rotation_median"], geo["pose"]["translation_median"]
            checks.append(
                f"- {mode}: median relative rotation error {rot:.2f} deg (bar <= {ROTATION_BAR}: "
                f"{_met(rot <= ROTATION_BAR)}), translation direction {trans:.2f} deg (bar <= "
                f"{TRANSLATION_BAR}: {_met(trans <= TRANSLATION_BAR)})"
            )

    text = machine_header(
        "Feed-forward NVS of da3-tiny-synthetic (`benchmarks/nvs_tiny.py`)",
        [
            f"- load average before: {load_before}; after: {loadavg()}",
            f"- model: {a.model}; {trained['scenes']} held-out scenes from {a.scenes} (never trained on); "
            f"{trained['size'][0]}x{trained['size'][1]}, {trained['context_views']} context views, targets every 8th "
            f"frame; LPIPS {'used' if trained['lpips'] else 'not available (no local weights)'}",
        ],
    )
    text += "\n## Target views (mean over scenes)\n\n"
    text += md_table(["mode", "method", "PSNR (dB)", "SSIM", "Gaussians", "s / scene"], rows)
    text += "\n## Geometry: context-view depth (one median scale per scene) and pose-free cameras (all view pairs)\n\n"
    text += md_table(
        [
            "mode",
            "model",
            "AbsRel",
            "delta<1.25",
            "rot. err. median (deg)",
            "transl. dir. err. median (deg)",
            "AUC@3",
            "AUC@5",
            "AUC@15",
        ],
        geometry_rows,
    )
    runs = [r for r in a.runs if (r / "summary.json").is_file()]
    if runs:
        text += "\n## Training (2 CPU cores)\n\n"
        text += md_table(["run", "trains", "steps", "wall (min)", "CPU (min, all threads)"], training_rows(runs))
    text += "\n## Bars\n\n" + "\n".join(checks) + "\n"
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
