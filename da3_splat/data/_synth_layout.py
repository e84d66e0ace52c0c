"""Random scene layouts for the synthetic generator: room, camera trajectory, objects, materials, lights.

The trajectory is drawn first and the objects are then placed away from it, so the camera never enters an
object; trajectories that would look at a wall from close range are redrawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from da3_splat.data._synth_raycast import Light, SceneGeometry
from da3_splat.data._synth_textures import KINDS, random_color, random_material

TRAJECTORIES = ("orbit", "dolly", "figure8")  # the default mix; every kind: TRAJECTORY_KINDS (below the paths)
WALL_MARGIN = 0.6  # metres between the camera and any wall, floor or ceiling
OBJECT_CLEARANCE = 0.6  # metres (horizontal) between the camera path and any object


@dataclass
class Trajectory:
    kind: str
    centers: np.ndarray  # (F, 3) camera positions
    targets: np.ndarray  # (F, 3) look-at points


def look_at_w2c(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (x right, y down, z forward) for a camera with world +y up and no roll."""
    f = target - center
    f = f / np.linalg.norm(f)
    r = np.cross(f, [0.0, 1.0, 0.0])
    r = r / np.linalg.norm(r)
    down = np.cross(f, r)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([r, down, f])
    w2c[:3, 3] = -w2c[:3, :3] @ center
    return w2c


def _smooth(rng: np.random.Generator, s: np.ndarray, amplitude: float) -> np.ndarray:
    """A slow random wiggle over the normalised path parameter s in [0, 1]."""
    freq, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    return amplitude * np.sin(2 * np.pi * freq * s + phase)


def _eye_height(rng, lo, hi, s, bob: float) -> np.ndarray:
    """Camera heights around 1.1 to 1.8 m with a slow bob, kept WALL_MARGIN off the floor and the ceiling."""
    top = min(1.8, hi[1] - WALL_MARGIN - bob)
    bottom = min(max(1.1, lo[1] + WALL_MARGIN + bob), top)
    return rng.uniform(bottom, top) + _smooth(rng, s, bob)


def _free_half(lo, hi) -> np.ndarray:
    """Half extent (x, z) of the region the camera may move in."""
    return (hi - lo)[[0, 2]] / 2 - WALL_MARGIN


def _orbit(rng, lo, hi, s):
    """An arc of 60-180 degrees around a point near the room centre, looking at (a wandering point near) it."""
    mid, half = (lo + hi)[[0, 2]] / 2, _free_half(lo, hi)
    radius = np.minimum(rng.uniform(0.4, 0.76, 2) * (half + WALL_MARGIN), half)
    center = mid + rng.uniform(-1, 1, 2) * np.minimum(half - radius, 0.2 * (half + WALL_MARGIN))
    theta = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * np.radians(rng.uniform(60, 180)) * s
    x, z = center[0] + radius[0] * np.cos(theta), center[1] + radius[1] * np.sin(theta)
    y = _eye_height(rng, lo, hi, s, 0.1)
    target_y = np.full_like(s, rng.uniform(0.3, 1.0))
    target = np.stack([center[0] + _smooth(rng, s, 0.3), target_y, center[1] + _smooth(rng, s, 0.3)], 1)
    return np.stack([x, y, z], 1), target


def _dolly(rng, lo, hi, s):
    """A gently curved forward move, looking ahead and slightly down with a slow turn."""
    mid, half = (lo + hi)[[0, 2]] / 2, _free_half(lo, hi)
    start, end = mid + rng.uniform(-1, 1, (2, 2)) * half
    bend = np.clip((start + end) / 2 + rng.uniform(-0.4, 0.4, 2), mid - half, mid + half)  # stays inside
    xz = ((1 - s) ** 2)[:, None] * start + (2 * s * (1 - s))[:, None] * bend + (s**2)[:, None] * end
    heading = np.arctan2(end[1] - start[1], end[0] - start[0]) + np.radians(rng.uniform(-30, 30))
    yaw = heading + np.radians(rng.uniform(-25, 25)) * (s - 0.5) * 2
    pitch = np.radians(rng.uniform(-30, -10))
    look = np.stack([np.cos(yaw) * np.cos(pitch), np.full_like(s, np.sin(pitch)), np.sin(yaw) * np.cos(pitch)], 1)
    path = np.stack([xz[:, 0], _eye_height(rng, lo, hi, s, 0.08), xz[:, 1]], 1)
    return path, path + 2.0 * look


def _figure8(rng, lo, hi, s):
    """A closed lemniscate in a horizontal plane, looking at a (wandering) point across the room."""
    mid, half = (lo + hi)[[0, 2]] / 2, _free_half(lo, hi)
    a = min(rng.uniform(0.3, 0.8), 0.9 * half.min())  # the curve stays within a of its centre
    center = mid + rng.uniform(-1, 1, 2) * (half - a)
    phi, rot = 2 * np.pi * s, rng.uniform(0, np.pi)
    u, v = a * np.sin(phi), a * np.sin(phi) * np.cos(phi)  # lemniscate of Gerono
    x = center[0] + np.cos(rot) * u - np.sin(rot) * v
    z = center[1] + np.sin(rot) * u + np.cos(rot) * v
    y = _eye_height(rng, lo, hi, s, 0.12)
    target = rng.uniform(lo + 0.5, hi - 0.5)
    target[1] = rng.uniform(0.3, 1.0)
    wander = np.stack([_smooth(rng, s, 0.2), np.zeros_like(s), _smooth(rng, s, 0.2)], 1)
    return np.stack([x, y, z], 1), target + wander


def _pan(rng, lo, hi, s):
    """A handheld pan: yaw sweeps 30-90 degrees (either way), pitch drifts, the camera sways a few centimetres."""
    mid, half = (lo + hi)[[0, 2]] / 2, _free_half(lo, hi)
    xz = mid + rng.uniform(-1, 1, 2) * np.maximum(half - 0.1, 0.0)
    yaw = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * np.radians(rng.uniform(30, 90)) * (s - 0.5)
    pitch = np.radians(rng.uniform(-25, 0)) + _smooth(rng, s, np.radians(6))
    look = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(pitch), np.sin(yaw) * np.cos(pitch)], 1)
    sway = np.stack([_smooth(rng, s, 0.05), np.zeros_like(s), _smooth(rng, s, 0.05)], 1)
    path = np.stack([np.full_like(s, xz[0]), _eye_height(rng, lo, hi, s, 0.03), np.full_like(s, xz[1])], 1) + sway
    return path, path + 2.0 * look


def _loop(rng, lo, hi, s):
    """A closed orbit of 1.1 turns around a point near the room centre, looking at it: the last tenth of the path
    sees again what the first did (a revisit, for loop closure). Height and target are periodic in the angle."""
    mid, half = (lo + hi)[[0, 2]] / 2, _free_half(lo, hi)
    radius = np.minimum(rng.uniform(0.4, 0.76, 2) * (half + WALL_MARGIN), half)
    center = mid + rng.uniform(-1, 1, 2) * np.minimum(half - radius, 0.2 * (half + WALL_MARGIN))
    turn = rng.choice([-1, 1]) * 2 * np.pi * 1.1 * s
    theta = rng.uniform(0, 2 * np.pi) + turn
    x, z = center[0] + radius[0] * np.cos(theta), center[1] + radius[1] * np.sin(theta)
    bob = 0.05
    top = min(1.8, hi[1] - WALL_MARGIN - bob)
    y = rng.uniform(min(max(1.1, lo[1] + WALL_MARGIN + bob), top), top) + bob * np.sin(2 * theta)
    target = np.stack([np.full_like(s, center[0]), np.full_like(s, rng.uniform(0.3, 1.0)), np.full_like(s, center[1])])
    return np.stack([x, y, z], 1), target.T


# "pan" (opt-in): a handheld pan, rotation with little parallax. The cross-view signal of a rotation is a plain
# image shift there, an easier start for a network that has to learn to match views from scratch.
# "loop" (opt-in): a closed orbit that revisits its start, for loop closure (benchmarks/streaming.py).
_PATHS = {"orbit": _orbit, "dolly": _dolly, "figure8": _figure8, "pan": _pan, "loop": _loop}
TRAJECTORY_KINDS = tuple(_PATHS)


def _view_distance(lo, hi, origin, direction) -> float:
    """Distance from origin along direction to the room's boundary."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(direction > 0, (hi - origin) / direction, (lo - origin) / direction)
    return float(np.min(np.where(t > 0, t, np.inf)))


def _sees_the_room(lo, hi, centers, targets, hfov: float, min_view_distance: float) -> bool:
    """No frame looks at a wall from close by: the central ray travels at least ``min_view_distance``,
    the rays at the left and right image borders at least 60% of it."""
    tan = np.tan(hfov / 2)
    for c, t in zip(centers, targets):
        R = look_at_w2c(c, t)[:3, :3]
        for x, need in ((0.0, 1.0), (-tan, 0.6), (tan, 0.6)):
            if _view_distance(lo, hi, c, R.T @ [x, 0.0, 1.0]) < need * min_view_distance:
                return False
    return True


def sample_trajectory(
    rng, lo, hi, frames: int, kinds: tuple[str, ...], hfov: float, min_view_distance: float
) -> Trajectory:
    """Redraws a path of one kind (chosen once, so hard-to-fit kinds are not under-represented) until it
    stays in the room and never looks at a wall from close by; in rooms too small for that, the required
    distance shrinks every 100 draws."""
    s = np.linspace(0.0, 1.0, frames)
    kind = str(rng.choice(kinds))
    draw = _PATHS[kind]
    for attempt in range(1000):
        centers, targets = draw(rng, lo, hi, s)
        inside = np.all(centers > lo + WALL_MARGIN - 1e-6) and np.all(centers < hi - WALL_MARGIN + 1e-6)
        need = min_view_distance * 0.85 ** (attempt // 100)
        if (
            inside
            and np.linalg.norm(targets - centers, axis=1).min() > 0.5
            and _sees_the_room(lo, hi, centers, targets, hfov, need)
        ):
            return Trajectory(kind, centers, targets)
    raise RuntimeError(f"could not fit a {kind} camera path into a room of {hi - lo} m")


def _place_objects(rng, lo, hi, traj: Trajectory, hfov: float, n_boxes: int, n_spheres: int):
    """Rejection-sample footprints (circles in xz) clear of the path, the walls and each other.

    Most objects are drawn inside the view of a random frame, 1 to 4 m ahead, so the views hold content."""
    path = traj.centers[:, [0, 2]]
    gaze = traj.targets[:, [0, 2]] - path
    yaws = np.arctan2(gaze[:, 1], gaze[:, 0])
    placed: list[tuple[np.ndarray, float]] = []

    def draw(radius: float):
        for _ in range(200):
            if rng.uniform() < 0.85:
                i = rng.integers(len(path))
                a = yaws[i] + rng.uniform(-0.4, 0.4) * hfov
                xz = path[i] + rng.uniform(1.0, 4.0) * np.array([np.cos(a), np.sin(a)])
            else:
                xz = rng.uniform(lo[[0, 2]], hi[[0, 2]])
            if np.any(xz - radius < lo[[0, 2]] + 0.02) or np.any(xz + radius > hi[[0, 2]] - 0.02):
                continue
            if np.linalg.norm(path - xz, axis=1).min() < radius + OBJECT_CLEARANCE:
                continue
            if any(np.linalg.norm(xz - q) < radius + r + 0.05 for q, r in placed):
                continue
            placed.append((xz, radius))
            return xz
        return None

    boxes = []
    for _ in range(n_boxes):
        half = rng.uniform([0.15, 0.1, 0.15], [0.6, 0.6, 0.6])
        xz = draw(float(np.hypot(half[0], half[2])))
        if xz is not None:
            boxes.append((np.array([xz[0], half[1], xz[1]]), half, rng.uniform(0, np.pi / 2)))
    spheres = []
    for _ in range(n_spheres):
        r = rng.uniform(0.15, 0.5)
        xz = draw(r)
        if xz is not None:
            floating = rng.uniform() < 0.25
            y = rng.uniform(r + 0.3, min(hi[1] - r - 0.6, 1.8)) if floating else r
            spheres.append((np.array([xz[0], y, xz[1]]), r))
    # a few small spheres resting on box tops (they sit inside the box's footprint, away from the path)
    for center, half, _ in boxes:
        if rng.uniform() < 0.3:
            r = rng.uniform(0.08, min(half[0], half[2], 0.3))
            spheres.append((center + [0.0, half[1] + r, 0.0], r))
    return boxes, spheres


def _lights(rng, lo, hi, n: int) -> list[Light]:
    out = []
    for i in range(n):
        tint = 0.75 + 0.25 * random_color(rng, (0.8, 1.0))
        if i == 1 and rng.uniform() < 0.5:  # a second, directional fill light
            d = np.array([rng.uniform(-1, 1), rng.uniform(0.5, 1.5), rng.uniform(-1, 1)])
            out.append(Light(d / np.linalg.norm(d), tint * rng.uniform(0.2, 0.45), directional=True))
        else:
            pos = rng.uniform(lo + 0.5, hi - 0.5)
            pos[1] = hi[1] - rng.uniform(0.2, 0.5)
            out.append(Light(pos, tint * rng.uniform(1.0, 1.6), falloff=float(rng.uniform(2.0, 4.0))))
    return out


def sample_scene(rng: np.random.Generator, cfg) -> tuple[SceneGeometry, Trajectory, float]:
    """A random room, trajectory, object set, materials and lights for a ``SyntheticConfig``; and the
    horizontal field of view (radians)."""
    size = np.array([rng.uniform(*cfg.room_width), rng.uniform(*cfg.room_height), rng.uniform(*cfg.room_depth)])
    lo, hi = np.array([-size[0] / 2, 0.0, -size[2] / 2]), np.array([size[0] / 2, size[1], size[2] / 2])
    hfov = np.radians(rng.uniform(*cfg.hfov_deg))
    traj = sample_trajectory(rng, lo, hi, cfg.frames, tuple(cfg.trajectories), hfov, cfg.min_view_distance)
    boxes, spheres = _place_objects(
        rng,
        lo,
        hi,
        traj,
        hfov,
        int(rng.integers(cfg.boxes[0], cfg.boxes[1] + 1)),
        int(rng.integers(cfg.spheres[0], cfg.spheres[1] + 1)),
    )
    n_surfaces = 6 + len(boxes) + len(spheres)
    materials = [random_material(rng, KINDS) for _ in range(n_surfaces)]
    geom = SceneGeometry(
        room_lo=lo,
        room_hi=hi,
        box_center=np.array([b[0] for b in boxes]).reshape(-1, 3),
        box_half=np.array([b[1] for b in boxes]).reshape(-1, 3),
        box_yaw=np.array([b[2] for b in boxes]),
        sphere_center=np.array([s[0] for s in spheres]).reshape(-1, 3),
        sphere_radius=np.array([s[1] for s in spheres]),
        materials=materials,
        lights=_lights(rng, lo, hi, int(rng.integers(cfg.lights[0], cfg.lights[1] + 1))),
        ambient=(0.2 + 0.2 * random_color(rng, (0.8, 1.0))).astype(np.float32),
        shadows=cfg.shadows,
    )
    return geom, traj, float(hfov)
