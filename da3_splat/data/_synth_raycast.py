"""Vectorised numpy ray casting for the synthetic scene generator.

A scene is an axis-aligned room (x, z horizontal, y up, floor at y = 0) holding boxes that may be rotated
about the vertical axis and spheres. Rays are given as an origin and per-pixel direction component arrays
(``dx, dy, dz``, float32); primary ray directions are scaled so that their camera-z component is 1, which
makes the ray parameter ``t`` of a hit its planar z-depth.

Surface ids: 0..5 are the room faces (x-, x+, floor, ceiling, z-, z+), then one id per box, then one per sphere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from da3_splat.data._synth_textures import Material, albedo

F32 = np.float32
INF = np.float32(np.inf)
ROOM_FACES = 6


@dataclass
class Light:
    position: np.ndarray  # (3,) for a point light; unit direction *towards* the light for a directional one
    color: np.ndarray  # (3,) linear RGB intensity
    directional: bool = False
    falloff: float = 3.0  # point lights: distance (m) at which the intensity halves


@dataclass
class SceneGeometry:
    room_lo: np.ndarray  # (3,)
    room_hi: np.ndarray  # (3,)
    box_center: np.ndarray  # (B, 3)
    box_half: np.ndarray  # (B, 3) half extents in the box frame
    box_yaw: np.ndarray  # (B,) rotation about +y
    sphere_center: np.ndarray  # (S, 3)
    sphere_radius: np.ndarray  # (S,)
    materials: list[Material] = field(default_factory=list)  # one per surface id
    lights: list[Light] = field(default_factory=list)
    ambient: np.ndarray = field(default_factory=lambda: np.full(3, 0.3, np.float32))
    shadows: bool = True

    @property
    def n_boxes(self) -> int:
        return len(self.box_yaw)

    @property
    def n_surfaces(self) -> int:
        return ROOM_FACES + len(self.box_yaw) + len(self.sphere_radius)

    def bounding_spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (N, 3) and radii (N,) of spheres enclosing the boxes, then the spheres themselves."""
        centers = np.concatenate([self.box_center, self.sphere_center]).reshape(-1, 3)
        radii = np.concatenate([np.linalg.norm(self.box_half, axis=1), self.sphere_radius])
        return centers, radii

    def object_bounds(self) -> list[np.ndarray]:
        """World-space axis-aligned bounding boxes (2, 3) of the boxes, then the spheres."""
        out = []
        for c, h, yaw in zip(self.box_center, self.box_half, self.box_yaw):
            cy, sy = abs(np.cos(yaw)), abs(np.sin(yaw))
            ext = np.array([cy * h[0] + sy * h[2], h[1], sy * h[0] + cy * h[2]])
            out.append(np.stack([c - ext, c + ext]))
        for c, r in zip(self.sphere_center, self.sphere_radius):
            out.append(np.stack([c - r, c + r]))
        return out


# --------------------------------------------------------------------------------------------------
# Intersections. Each returns the ray parameter of the first hit in (t_min, t_max), or inf.


def room_hit(g: SceneGeometry, o, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Rays starting inside the room: exit distance and face id."""
    t = ids = None
    for axis, d in enumerate((dx, dy, dz)):
        with np.errstate(divide="ignore", invalid="ignore"):
            ta = (np.where(d > 0, F32(g.room_hi[axis]), F32(g.room_lo[axis])) - F32(o[axis])) / d
        ta = np.where(ta > 0, ta, INF)
        face = np.where(d > 0, np.int16(2 * axis + 1), np.int16(2 * axis))
        if t is None:
            t, ids = ta, face
        else:
            closer = ta < t
            t, ids = np.where(closer, ta, t), np.where(closer, face, ids)
    return t, ids


def box_hit(center, half, yaw, o, dx, dy, dz, t_min=0.0, t_max=np.inf) -> np.ndarray:
    """Slab test in the box frame (rotation about y). ``o``: 3 scalars (one origin) or 3 per-ray arrays."""
    c, s = F32(np.cos(yaw)), F32(np.sin(yaw))
    ox, oy, oz = (F32(o[i]) - F32(center[i]) if np.isscalar(o[i]) else o[i] - F32(center[i]) for i in range(3))
    local_o = (c * ox - s * oz, oy, s * ox + c * oz)
    local_d = (c * dx - s * dz, dy, s * dx + c * dz)
    near = far = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, ld, h in zip(local_o, local_d, half):
            inv = 1.0 / ld
            t1, t2 = (-F32(h) - lo) * inv, (F32(h) - lo) * inv
            tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
            near = tn if near is None else np.maximum(near, tn)
            far = tf if far is None else np.minimum(far, tf)
        hit = (near <= far) & (near > t_min) & (near < t_max)
    return np.where(hit, near, INF)


def sphere_hit(center, radius, o, dx, dy, dz, t_min=0.0, t_max=np.inf) -> np.ndarray:
    ox, oy, oz = (F32(o[i]) - F32(center[i]) if np.isscalar(o[i]) else o[i] - F32(center[i]) for i in range(3))
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    cc = ox * ox + oy * oy + oz * oz - F32(radius * radius)
    disc = b * b - a * cc
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
        hit = (disc > 0) & (t > t_min) & (t < t_max)
    return np.where(hit, t, INF)


def _object_hit(g: SceneGeometry, k: int, o, dx, dy, dz, t_min=0.0, t_max=np.inf) -> np.ndarray:
    if k < g.n_boxes:
        return box_hit(g.box_center[k], g.box_half[k], g.box_yaw[k], o, dx, dy, dz, t_min, t_max)
    k -= g.n_boxes
    return sphere_hit(g.sphere_center[k], g.sphere_radius[k], o, dx, dy, dz, t_min, t_max)


def trace(g: SceneGeometry, o, dx, dy, dz, windows=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit (t, surface id) of rays from the single origin ``o``.

    ``windows`` optionally gives, per object, the index (e.g. a 2D slice of the image) outside which its
    rays cannot hit it, or None when it is entirely off-screen: a cheap bounding test.
    """
    t, ids = room_hit(g, o, dx, dy, dz)
    n_obj = g.n_surfaces - ROOM_FACES
    for k in range(n_obj):
        win = ... if windows is None else windows[k]
        if win is None:
            continue
        tk = _object_hit(g, k, o, dx[win], dy[win], dz[win])
        tv, iv = t[win], ids[win]
        closer = tk < tv
        np.copyto(tv, tk, where=closer)
        iv[closer] = ROOM_FACES + k
    return t, ids


def screen_windows(g: SceneGeometry, K: np.ndarray, w2c: np.ndarray, height: int, width: int) -> list:
    """Per object, the image rectangle holding its projection (from its bounding box corners)."""
    out = []
    for lo, hi in g.object_bounds():
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        cam = corners @ w2c[:3, :3].T + w2c[:3, 3]
        if cam[:, 2].max() <= 0:  # behind the camera: primary rays only reach points with z > 0
            out.append(None)
            continue
        if cam[:, 2].min() < 1e-2:  # straddles the camera plane: no cheap bound
            out.append(...)
            continue
        uv = cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        # pixel (i, j) samples the image point (j + 0.5, i + 0.5); keep a one-pixel margin
        c0, r0 = np.floor(uv.min(0) - 1.5).astype(int)
        c1, r1 = np.ceil(uv.max(0) + 0.5).astype(int)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, width), min(r1, height)
        out.append((slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None)
    return out


# --------------------------------------------------------------------------------------------------
# Shading. Vectors are tuples of three 1D arrays (or scalars): numpy reduces (N, 3) arrays over the short
# axis slowly, so the arithmetic is written per component.


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _surface_frame(g: SceneGeometry, sid: int, p):
    """Normal and texture coordinates (a list of (u, v, weight)) at points ``p`` on surface ``sid``."""
    if sid < ROOM_FACES:
        axis, sign = sid // 2, (1.0 if sid % 2 == 0 else -1.0)  # room normals point inwards
        n = tuple(F32(sign if a == axis else 0.0) for a in range(3))
        ua, va = {0: (2, 1), 1: (0, 2), 2: (0, 1)}[axis]
        return n, [(p[ua], p[va], None)]
    k = sid - ROOM_FACES
    if k < g.n_boxes:
        c, s = F32(np.cos(g.box_yaw[k])), F32(np.sin(g.box_yaw[k]))
        qx, qy, qz = (p[i] - F32(g.box_center[k][i]) for i in range(3))
        lx, ly, lz = c * qx - s * qz, qy, s * qx + c * qz
        h = g.box_half[k]
        ax, ay, az = np.abs(lx) / F32(h[0]), np.abs(ly) / F32(h[1]), np.abs(lz) / F32(h[2])
        on_x, on_y = (ax >= ay) & (ax >= az), (ay > ax) & (ay >= az)  # the face is the largest relative coordinate
        on_z = ~(on_x | on_y)
        nlx, nly, nlz = (np.where(on, np.sign(l), F32(0.0)) for on, l in ((on_x, lx), (on_y, ly), (on_z, lz)))
        n = (c * nlx + s * nlz, nly, -s * nlx + c * nlz)  # back to world axes
        u = np.where(on_x, lz, lx)
        v = np.where(on_y, lz, ly)
        return n, [(u, v, None)]
    k -= g.n_boxes
    q = tuple(p[i] - F32(g.sphere_center[k][i]) for i in range(3))
    n = tuple(qi / F32(g.sphere_radius[k]) for qi in q)
    w4 = [ni * ni * ni * ni for ni in n]  # triplanar mapping: blend the axis projections by the normal
    norm = 1.0 / (w4[0] + w4[1] + w4[2])
    return n, [(q[2], q[1], w4[0] * norm), (q[0], q[2], w4[1] * norm), (q[0], q[1], w4[2] * norm)]


def _shadow_candidates(p, light: Light, centers, radii) -> list:
    """Per occluder, the indices of the points whose shadow ray may cross its bounding sphere (None: all)."""
    out = []
    if light.directional:  # cylinders along the light direction: test in the plane across it
        dirn = light.position
        a_axis = np.cross(dirn, [0.0, 1.0, 0.0] if abs(dirn[1]) < 0.9 else [1.0, 0.0, 0.0])
        a_axis /= np.linalg.norm(a_axis)
        b_axis = np.cross(dirn, a_axis)
        pa, pb, pz = (_dot(p, tuple(F32(x) for x in ax)) for ax in (a_axis, b_axis, dirn))
        for c, r in zip(centers, radii):
            ca, cb, cz = c @ a_axis, c @ b_axis, c @ dirn
            da, db = pa - F32(ca), pb - F32(cb)
            out.append(np.nonzero((da * da + db * db < F32(r * r)) & (pz < F32(cz + r)))[0])
        return out
    v = tuple(p[i] - F32(light.position[i]) for i in range(3))  # light -> point
    vlen = np.sqrt(_dot(v, v))
    for c, r in zip(centers, radii):  # cones from the light tangent to each sphere
        to_c = c - light.position
        dist = np.linalg.norm(to_c)
        if dist <= r * 1.01:
            out.append(None)
            continue
        u = tuple(F32(x) for x in to_c / dist)
        cos = F32(np.sqrt(1.0 - (r / dist) ** 2))
        out.append(np.nonzero((_dot(v, u) >= vlen * cos) & (vlen >= F32(dist - r)))[0])
    return out


def _visibility(g: SceneGeometry, sid: int, p, light: Light) -> np.ndarray:
    """1 where the light reaches p, 0 where an object (other than p's own, convex, surface) blocks it.

    Occluders are culled by their bounding spheres, first for the whole point set (a capsule around the
    segment from the points' centre to the light), then per point, before the exact test."""
    lit = np.ones(len(p[0]), bool)
    if len(lit) == 0:
        return lit.astype(F32)
    p_mid = np.array([x.mean() for x in p])
    p_rad = float(np.sqrt(np.max(sum((x - F32(m)) ** 2 for x, m in zip(p, p_mid)))))
    reach = light.position * 1e3 if light.directional else light.position - p_mid
    centers, radii = g.bounding_spheres()
    s = np.clip((centers - p_mid) @ reach / (reach @ reach), 0.0, 1.0)
    near = np.linalg.norm(centers - p_mid - s[:, None] * reach, axis=1) <= radii + p_rad
    if sid >= ROOM_FACES:
        near[sid - ROOM_FACES] = False  # convex objects do not shadow themselves
    keep = np.nonzero(near)[0]
    if not len(keep):
        return lit.astype(F32)
    if light.directional:
        to_light, t_max = tuple(F32(x) for x in light.position), np.inf
    else:
        to_light, t_max = tuple(F32(light.position[i]) - p[i] for i in range(3)), 1.0
    for k, cand in zip(keep, _shadow_candidates(p, light, centers[keep], radii[keep])):
        if cand is None:
            cand = np.arange(len(lit))
        if len(cand):
            d = [x if np.ndim(x) == 0 else x[cand] for x in to_light]
            hit = _object_hit(g, k, [x[cand] for x in p], *d, t_min=1e-4, t_max=t_max)
            lit[cand[hit < INF]] = False
    return lit.astype(F32)


def shade(g: SceneGeometry, table, o, dx, dy, dz, t, ids, filter_scale: float) -> np.ndarray:
    """Linear RGB, channel-first (3, N), of 1D rays with hits (t, ids): textured Lambertian surfaces lit by
    an ambient term and the lights. Textures are box-filtered over ``filter_scale`` x depth (metres)."""
    rgb = np.empty((3, len(t)), F32)
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=g.n_surfaces))])
    for sid in range(g.n_surfaces):
        idx = order[bounds[sid] : bounds[sid + 1]]
        if len(idx) == 0:
            continue
        d, tt = (dx[idx], dy[idx], dz[idx]), t[idx]
        p = tuple(F32(o[i]) + tt * d[i] for i in range(3))
        n, uvs = _surface_frame(g, sid, p)
        # texture filter width on the surface: depth * filter_scale (pixels / focal), wider at grazing angles
        cos = np.abs(_dot(d, n)) / np.sqrt(_dot(d, d))
        w = tt * F32(filter_scale) / np.sqrt(np.maximum(cos, F32(0.05)))
        mat = g.materials[sid]
        alb = sum(albedo(mat, table, u, v, w) * (1.0 if wt is None else wt) for u, v, wt in uvs)
        irr = g.ambient.astype(F32)[:, None] * (0.85 + 0.15 * np.broadcast_to(n[1], tt.shape))
        for lt in g.lights:
            if lt.directional:
                ndl = np.broadcast_to(_dot(n, lt.position.astype(F32)), tt.shape).copy()
            else:
                to_l = tuple(F32(lt.position[i]) - p[i] for i in range(3))
                dist2 = _dot(to_l, to_l)
                ndl = _dot(n, to_l) / np.sqrt(dist2) / (1.0 + dist2 * F32(1.0 / lt.falloff**2))
            ndl = np.maximum(ndl, F32(0.0))
            if g.shadows:
                lit = np.nonzero(ndl > 0)[0]  # only surfaces facing the light can be shadowed
                ndl[lit] *= _visibility(g, sid, [x[lit] for x in p], lt)
            irr += lt.color.astype(F32)[:, None] * ndl
        rgb[:, idx] = alb * irr
    return rgb
