"""`make demo`, measured: runs `da3-splat demo` (synthetic scene -> ns-train da3-splat feed-forward and refined ->
ns-eval held-out PSNR/SSIM -> PLY) and writes its summary to benchmarks/results/demo.md, the source of the README's
demo figures.

    python benchmarks/demo.py [--out benchmarks/results/demo.md] [--preview docs/demo-preview.jpg]

``--preview`` also keeps the run's preview grid, as the JPEG the README shows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import RESULTS, loadavg, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

from da3_splat.commands.demo import DemoConfig, run_demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "demo.md")
    p.add_argument("--preview", type=Path, help="also write the preview grid here (JPEG)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DemoConfig(output=Path(tmp) / "demo_out")
        load_before = loadavg()
        s = run_demo(cfg)
        if a.preview is not None and s["preview"] is not None:
            from PIL import Image

            image = Image.open(s["preview"]).convert("RGB")
            image.thumbnail((960, 960))  # the README's size: 3 columns of 320 px
            image.save(a.preview, quality=85)
            print(f"wrote {a.preview}")
    extra = [
        f"- `da3-splat demo` with its defaults: weights {s['weights']}, {s['frames']} frames, "
        f"{s['refine_steps']} refinement steps; environment already installed",
        f"- load average before: {load_before}; after: {loadavg()}",
        "",
    ]
    rows = [[name, f"{s['psnr'][name]:.2f}", f"{s['ssim'][name]:.3f}"] for name in s["psnr"]]
    text = machine_header("`make demo` (`benchmarks/demo.py`)", extra)
    text += md_table(["run", "held-out PSNR (dB)", "held-out SSIM"], rows)
    text += f"\nwall time: {s['seconds'] / 60:.1f} min\n"
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
