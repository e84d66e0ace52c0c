"""Gaussians <-> the standard INRIA 3DGS PLY (what SuperSplat, the INRIA viewer, gsplat and nerfstudio read).

One binary little-endian ``vertex`` element of float32 properties, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0..2 rot_0..3

``f_rest_*`` is channel-major (all R coefficients 1..K-1, then G, then B) and present only for SH degree > 0;
normals are zero; opacity is stored as a logit, scales as log standard deviations, rot as the wxyz quaternion
as stored (not normalised). The reader takes properties by name, so any order and files without normals read
in, including nerfstudio's ``ns-export gaussian-splat`` output (``--ply-color-mode rgb`` too: uchar
``red green blue`` become the SH DC coefficient).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians

_REQUIRED = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_RGB = ("red", "green", "blue")


def ply_property_names(sh_degree: int) -> list[str]:
    """Property names, in file order, for a given SH degree."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        *_DC,
        *(f"f_rest_{i}" for i in range(n_rest)),
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]


def _encode(g: Gaussians) -> np.ndarray:
    """Unbatched Gaussians -> (N, P) float32 columns in file order."""
    g = g.detach().to("cpu", torch.float32)
    n = g.num_gaussians
    rest = g.sh[:, 1:, :].transpose(1, 2).reshape(n, 3 * (g.sh.shape[1] - 1))  # (N, 3, K-1): channel-major
    opacity = torch.logit(g.opacities)[:, None]
    if not torch.isfinite(opacity).all():
        raise ValueError("opacities: a value of exactly 0 or 1 has no finite logit for the PLY")
    cols = [g.means, torch.zeros(n, 3), g.sh[:, 0, :], rest, opacity, g.scales.log(), g.quats]
    return torch.cat(cols, dim=1).numpy()


def write_ply(path, gaussians: Gaussians, overwrite: bool = False) -> Path:
    """Write unbatched Gaussians as a 3DGS PLY, atomically. Refuses to replace a file unless ``overwrite``."""
    from plyfile import PlyData, PlyElement

    from da3_splat.files import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if gaussians.is_batched:
        raise ValueError(f"write_ply takes unbatched Gaussians, got batch shape {tuple(gaussians.batch_shape)}")
    gaussians.validate()
    names = ply_property_names(gaussians.sh_degree)
    cols = np.ascontiguousarray(_encode(gaussians), dtype="<f4")
    vertex = cols.view([(name, "<f4") for name in names]).reshape(-1)  # no copy: rows are the records
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<", comments=["da3-splat"])
    return atomic_write(path, ply.write)


def _load_vertex(path: Path):
    from plyfile import PlyData

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        ply = PlyData.read(str(path))
        return ply["vertex"].data
    except KeyError:
        raise InputError(f"{path}: not a 3DGS PLY (no 'vertex' element)") from None
    except Exception as e:  # noqa: BLE001 -- plyfile raises several types for a damaged or foreign file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a readable PLY ({msg})") from None


def _rest_count(path: Path, props: set[str]) -> int:
    n = sum(1 for p in props if p.startswith("f_rest_"))
    if {f"f_rest_{i}" for i in range(n)} - props or n not in (0, 9, 24, 45):
        raise InputError(f"{path}: {n} f_rest_* properties; expected 0, 9, 24 or 45 numbered from 0 (SH degree 0-3)")
    return n


def read_ply(path) -> Gaussians:
    """Read a 3DGS PLY -> unbatched float32 Gaussians (opacity = sigmoid, scale = exp, quats as stored)."""
    from da3_splat.sh import RGB2SH

    path = Path(path)
    v = _load_vertex(path)
    props = set(v.dtype.names or ())
    missing = [p for p in _REQUIRED if p not in props]
    has_dc, has_rgb = set(_DC) <= props, set(_RGB) <= props
    if missing or not (has_dc or has_rgb):
        what = ", ".join(missing + ([] if has_dc or has_rgb else ["f_dc_0..2"]))
        raise InputError(f"{path}: not a 3DGS PLY (missing {what}; properties: {' '.join(v.dtype.names or ())})")
    n_rest = _rest_count(path, props)

    names = list(v.dtype.names)
    if all(v.dtype[p] == np.dtype("<f4") for p in names) and v.dtype.itemsize == 4 * len(names):
        table = np.ascontiguousarray(v).view("<f4").reshape(len(v), len(names))  # fast path: one read

        def col(*cols: str) -> torch.Tensor:
            return torch.from_numpy(table[:, [names.index(p) for p in cols]])

    else:

        def col(*cols: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([np.asarray(v[p], dtype=np.float32) for p in cols], axis=-1))

    dc = col(*_DC) if has_dc else RGB2SH(col(*_RGB) / 255.0)
    sh = dc[:, None, :]
    if n_rest:
        rest = col(*(f"f_rest_{i}" for i in range(n_rest)))  # channel-major (N, 3 * (K-1))
        sh = torch.cat([sh, rest.reshape(-1, 3, n_rest // 3).transpose(1, 2)], dim=1)
    return Gaussians(
        means=col("x", "y", "z"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        scales=col("scale_0", "scale_1", "scale_2").exp(),
        opacities=torch.sigmoid(col("opacity")[:, 0]),
        sh=sh.contiguous(),
    )
