"""A synthetic multi-view scene with exact answers, for tests and the GPU benchmark (no Blender there).

Two UV spheres, tessellated for texturing but ray-cast exactly for each camera's depth and object
labels, seen by a ring of perspective cameras: the same inputs ``sd_core.multiview`` gets from Blender.
"""

from __future__ import annotations

import math

import numpy as np

from sd_core.multiview import Surface, View
from sd_core.projection import CameraModel

SPHERES = ((np.array([-1.1, 0.0, 0.0]), 1.0), (np.array([1.3, 0.2, 0.1]), 0.8))
TARGET = np.array([0.1, 0.1, 0.0])
HALF_FOV_DEGREES = 25.0


def uv_sphere(
    centre: np.ndarray, radius: float, segments: int = 32, rings: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-corner UVs (T, 3, 2), positions and smooth normals (T, 3, 3); the u = 0/1 seam is an island edge."""
    u = np.linspace(0.0, 1.0, segments + 1)
    v = np.linspace(0.0, 1.0, rings + 1)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    theta, phi = vv * math.pi, uu * 2 * math.pi  # theta from the south pole
    normal = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), -np.cos(theta)], axis=-1)
    uv = np.stack([uu, vv], axis=-1)
    quads = [(i, j) for i in range(segments) for j in range(rings)]
    lower = [[(i, j), (i + 1, j), (i + 1, j + 1)] for i, j in quads]
    upper = [[(i, j), (i + 1, j + 1), (i, j + 1)] for i, j in quads]
    corners = np.array(lower + upper)
    index = (corners[..., 0], corners[..., 1])
    return uv[index], centre + radius * normal[index], normal[index]


def surfaces(texture_size: int) -> list[Surface]:
    return [
        Surface.from_mesh(f"Sphere {number}", *uv_sphere(centre, radius), texture_size)
        for number, (centre, radius) in enumerate(SPHERES, 1)
    ]


def look_at(eye: np.ndarray, target: np.ndarray, size: int) -> CameraModel:
    """A square perspective camera at ``eye`` looking at ``target``, +Z up (as Blender's Track To does)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right) if np.linalg.norm(right) > 1e-6 else np.array([1.0, 0.0, 0.0])
    up = np.cross(right, forward)
    world = np.eye(4)
    world[:3, 0], world[:3, 1], world[:3, 2], world[:3, 3] = right, up, -forward, eye
    near, far, scale = 0.1, 100.0, 1.0 / math.tan(math.radians(HALF_FOV_DEGREES))
    projection = np.array(
        [
            [scale, 0, 0, 0],
            [0, scale, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ]
    )
    return CameraModel(np.linalg.inv(world), projection, size, size)


def render(camera: CameraModel) -> View:
    """Exact planar depth and sphere labels at every pixel centre, by ray casting the true spheres."""
    size = camera.width
    rows, columns = np.mgrid[0:size, 0:size] + 0.5
    p = camera.projection_matrix
    directions = np.stack(
        [(columns / size * 2 - 1) / p[0, 0], (1 - rows / size * 2) / p[1, 1], -np.ones_like(rows)], -1
    )
    world_directions = directions @ camera.camera_to_world[:3, :3].T
    origin = camera.camera_to_world[:3, 3]
    depth = np.full((size, size), np.inf)
    labels = np.zeros((size, size), np.int32)
    for label, (centre, radius) in enumerate(SPHERES, 1):
        offset = origin - centre
        a = (world_directions**2).sum(-1)
        b = 2 * (world_directions * offset).sum(-1)
        c = offset @ offset - radius**2
        discriminant = b**2 - 4 * a * c
        t = np.where(discriminant >= 0, (-b - np.sqrt(np.maximum(discriminant, 0))) / (2 * a), np.inf)
        nearer = (t > 0) & (t < depth)
        depth[nearer], labels[nearer] = t[nearer], label
    return View(camera, np.full((size, size, 3), 0.5, np.float32), depth.astype(np.float32), labels)


def ring(size: int, count: int = 6, elevation_degrees: float = 20.0, top: bool = True) -> list[View]:
    """``count`` views around the spheres at 7 units, in ring order, plus one from above."""
    tilt = math.radians(elevation_degrees)
    eyes = [
        TARGET + 7.0 * np.array([math.cos(tilt) * math.cos(angle), math.cos(tilt) * math.sin(angle), math.sin(tilt)])
        for angle in (2 * math.pi * k / count for k in range(count))
    ]
    if top:
        eyes.append(TARGET + np.array([0.01, 0.0, 7.0]))
    return [render(look_at(eye, TARGET, size)) for eye in eyes]
