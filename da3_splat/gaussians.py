"""Container for 3D Gaussians in the layout gsplat consumes.

Every field has leading batch dims ``(*B, N, ...)``: ``B = ()`` for an unbatched set (what the PLY writer, the
reducers and nerfstudio take), ``(B,)`` for what the model returns. Indexing rule (``g[key]``):

- unbatched: ``key`` (int, slice, bool mask (N,), index tensor/list) selects along the Gaussian axis; an int
  keeps that axis, so ``g[i]`` is a one-Gaussian set, never a bare tensor.
- batched: only an int is accepted and it picks that batch element (``g[0]`` is the first scene, unbatched).
  Use ``g.select(key)`` to index the Gaussian axis of every batch element with the same key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from numbers import Integral

import torch
from torch import Tensor

# Per field: number of trailing dims after the Gaussian axis.
_TRAILING = {"means": 1, "quats": 1, "scales": 1, "opacities": 0, "sh": 2}
_LAST = {"means": 3, "quats": 4, "scales": 3}
# Positional order of `from_splatfacto_params` and keys of `to_splatfacto_params` (splatfacto's `gauss_params`).
SPLATFACTO_KEYS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


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

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def is_batched(self) -> bool:
        return len(self.batch_shape) > 0

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> Gaussians:
        """Same as ``Tensor.to`` applied to every field."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(Tensor.detach)

    def clone(self) -> Gaussians:
        return self._map(Tensor.clone)

    # ----------------------------------------------------------------------------------------------
    # Indexing and concatenation

    def select(self, key) -> Gaussians:
        """Index the Gaussian axis (of every batch element) with ``key``; an int keeps the axis."""
        if isinstance(key, Integral):
            n = self.num_gaussians
            if not -n <= key < n:
                raise IndexError(f"Gaussian index {key} out of range for {n} Gaussians")
            key = slice(key % n, key % n + 1)
        elif isinstance(key, (list, tuple)):
            key = torch.as_tensor(key)
        if isinstance(key, Tensor):
            key = key.to(self.means.device)
        return Gaussians(
            **{
                name: getattr(self, name)[(Ellipsis, key) + (slice(None),) * trailing]
                for name, trailing in _TRAILING.items()
            }
        )

    def __getitem__(self, key) -> Gaussians:
        if not self.is_batched:
            return self.select(key)
        if not isinstance(key, Integral):
            raise TypeError(
                f"a batched Gaussians (batch shape {tuple(self.batch_shape)}) takes an int batch index; "
                "use .select(key) to index the Gaussian axis"
            )
        return self._map(lambda t: t[key])

    @classmethod
    def stack(cls, items: Sequence[Gaussians]) -> Gaussians:
        """Stack unbatched sets of equal size and SH degree into a batch (B, N, ...)."""
        items = list(items)
        if not items or len({(g.num_gaussians, g.sh_degree, tuple(g.batch_shape)) for g in items}) != 1:
            raise ValueError("Gaussians.stack needs one or more sets of the same size, SH degree and batch shape")
        return cls(**{f.name: torch.stack([getattr(g, f.name) for g in items]) for f in fields(cls)})

    @classmethod
    def cat(cls, items: Sequence[Gaussians]) -> Gaussians:
        """Concatenate along the Gaussian axis; SH is promoted to the highest degree present (zero bands)."""
        items = list(items)
        if not items:
            raise ValueError("Gaussians.cat needs at least one set")
        shapes = {tuple(g.batch_shape) for g in items}
        if len(shapes) > 1:
            raise ValueError(f"Gaussians.cat: batch shapes differ: {sorted(shapes)}")
        degree = max(g.sh_degree for g in items)
        items = [g.with_sh_degree(degree) for g in items]
        return cls(
            **{
                name: torch.cat([getattr(g, name) for g in items], dim=-1 - trailing)
                for name, trailing in _TRAILING.items()
            }
        )

    def with_sh_degree(self, degree: int) -> Gaussians:
        """Truncate higher SH bands, or append zero bands (which render nothing) up to ``degree``."""
        if not 0 <= degree <= 3:
            raise ValueError(f"SH degree must be in [0, 3], got {degree}")
        K, k = (degree + 1) ** 2, self.sh.shape[-2]
        if K <= k:
            sh = self.sh[..., :K, :]
        else:
            sh = torch.cat([self.sh, self.sh.new_zeros(*self.sh.shape[:-2], K - k, 3)], dim=-2)
        return Gaussians(self.means, self.quats, self.scales, self.opacities, sh)

    # ----------------------------------------------------------------------------------------------
    # Checks and derived quantities

    def validate(self) -> Gaussians:
        """Raise ValueError naming the first bad field (shape, finiteness, range); return self otherwise."""
        lead = self.means.shape[:-1]
        if self.means.dim() < 2:
            raise ValueError(f"means: expected shape (..., N, 3), got {tuple(self.means.shape)}")
        for name, last in _LAST.items():
            t = getattr(self, name)
            if t.shape != (*lead, last):
                raise ValueError(f"{name}: expected shape {(*lead, last)}, got {tuple(t.shape)}")
        if self.opacities.shape != lead:
            raise ValueError(f"opacities: expected shape {tuple(lead)}, got {tuple(self.opacities.shape)}")
        K = self.sh.shape[-2] if self.sh.dim() >= 2 else 0
        if self.sh.shape[:-2] != lead or self.sh.shape[-1:] != (3,) or K not in (1, 4, 9, 16):
            raise ValueError(f"sh: expected shape {(*lead, 'K', 3)} with K in 1, 4, 9, 16, got {tuple(self.sh.shape)}")
        for f in fields(self):
            if not torch.isfinite(getattr(self, f.name)).all():
                raise ValueError(f"{f.name}: contains NaN or infinite values")
        if ((self.opacities < 0) | (self.opacities > 1)).any():
            raise ValueError("opacities: values outside [0, 1]")
        if (self.scales <= 0).any():
            raise ValueError("scales: values <= 0 (scales are activated standard deviations)")
        if (self.quats.square().sum(-1) == 0).any():
            raise ValueError("quats: zero-length quaternion")
        return self

    def rotation_matrices(self) -> Tensor:
        """(..., N, 3, 3) rotations of the (normalised) quaternions."""
        from da3_splat.geometry import quat_wxyz_to_xyzw, quat_xyzw_to_matrix

        return quat_xyzw_to_matrix(quat_wxyz_to_xyzw(self.quats))

    def covariances(self) -> Tensor:
        """(..., N, 3, 3) covariances R diag(scales^2) R^T."""
        R = self.rotation_matrices()
        return (R * self.scales[..., None, :].square()) @ R.mT

    # ----------------------------------------------------------------------------------------------
    # nerfstudio splatfacto parameters (integration reference §6.2, §6.5)

    @classmethod
    def from_splatfacto_params(
        cls,
        means: Tensor,
        scales_log: Tensor,
        quats: Tensor,
        features_dc: Tensor,
        features_rest: Tensor | None,
        opacities_logit: Tensor,
    ) -> Gaussians:
        """splatfacto's raw parameters -> Gaussians. ``features_dc`` (..., N, 3) is the SH DC coefficient (as
        splatfacto stores it for sh_degree > 0; with sh_degree = 0 it stores logit(rgb) instead, which this
        does not undo), ``features_rest`` (..., N, K-1, 3) or None, ``opacities_logit`` (..., N, 1) or (..., N).
        Call with ``*(params[k] for k in SPLATFACTO_KEYS)`` for a splatfacto ``gauss_params`` dict."""
        sh = features_dc[..., None, :]
        if features_rest is not None:
            sh = torch.cat([sh, features_rest.to(sh)], dim=-2)
        if opacities_logit.dim() == means.dim():
            opacities_logit = opacities_logit.squeeze(-1)
        return cls(means, quats, scales_log.exp(), torch.sigmoid(opacities_logit), sh)

    def to_splatfacto_params(self) -> dict[str, Tensor]:
        """-> splatfacto's ``gauss_params`` layout: log scales, wxyz quats as stored, SH DC (N, 3), SH rest
        (N, K-1, 3), logit opacities (N, 1). Opacity exactly 0 or 1 gives an infinite logit (nothing clamped)."""
        return {
            "means": self.means,
            "scales": self.scales.log(),
            "quats": self.quats,
            "features_dc": self.sh[..., 0, :],
            "features_rest": self.sh[..., 1:, :],
            "opacities": torch.logit(self.opacities)[..., None],
        }

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
