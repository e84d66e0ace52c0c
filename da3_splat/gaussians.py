"""Container for 3D Gaussians in the layout gsplat consumes."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class Gaussians:
    means: Tensor  # (..., N, 3) world positions
    quats: Tensor  # (..., N, 4) read as wxyz by gsplat (DA3 adapter: its stored vector, spec §8.5)
    scales: Tensor  # (..., N, 3) standard deviations (activated, not log)
    opacities: Tensor  # (..., N) in (0, 1)
    sh: Tensor  # (..., N, K, 3) SH coefficients, coefficient-major, K = (sh_degree + 1) ** 2

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[-2]) - 1

    def to(self, *args, **kwargs) -> Gaussians:
        """Same as ``Tensor.to`` applied to every field."""
        return Gaussians(**{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})

    def transformed(self, R: Tensor, t: Tensor, s: Tensor | float) -> Gaussians:
        """The same Gaussians after the world moves by x' = s R x + t (rotation, translation, uniform scale)."""
        from da3_splat.geometry import matrix_to_quat_wxyz, quat_mul_wxyz
        from da3_splat.sh import rotate_sh

        R = R.to(self.means)
        q = matrix_to_quat_wxyz(R).expand_as(self.quats)
        return Gaussians(
            means=s * self.means @ R.T + t.to(self.means),
            quats=quat_mul_wxyz(q, self.quats),
            scales=self.scales * s,
            opacities=self.opacities,
            sh=rotate_sh(self.sh, R),
        )
