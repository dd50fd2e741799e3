"""Signed-distance shapes for the phantom anatomy (lengths in mm, world RAS+ coordinates).

Every shape returns a *conservative* signed distance: negative inside, positive outside, and its
magnitude never exceeds the true distance to the surface. The rasteriser relies on that bound to
decide which voxels lie wholly inside or outside a shape (no supersampling needed) and which
straddle the surface. Arguments ``x, y, z`` are broadcastable arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

_INF = np.inf


class Shape(ABC):
    """Base class: ``lo``/``hi`` bound the shape (mm); ``feature_mm`` is its thinnest dimension."""

    lo: np.ndarray
    hi: np.ndarray
    feature_mm: float

    @abstractmethod
    def sdf(self, x, y, z):
        """Signed distance (mm, negative inside) that never overstates the true distance."""

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean inside test for an (N, 3) array of points."""
        p = np.asarray(points, dtype=float)
        return self.sdf(p[:, 0], p[:, 1], p[:, 2]) < 0


class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rotation`` (world <- local).

    Bound: with s = |A^-1 R^T (p - c)|, every surface point e has |A^-1 R^T (p - e)| >= |s - 1|,
    and |A^-1 v| <= |v| / a_min, so the distance is at least a_min |s - 1|.
    """

    def __init__(self, center, axes, rotation=None):
        self.center = np.asarray(center, dtype=float)
        self.axes = np.asarray(axes, dtype=float)
        if np.any(self.axes <= 0):
            raise ValueError(f"ellipsoid semi-axes must be positive, got {self.axes}")
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=float)
        R = np.eye(3) if self.rotation is None else self.rotation
        half = np.sqrt(((R * self.axes[None, :]) ** 2).sum(axis=1))
        self.lo, self.hi = self.center - half, self.center + half
        self.feature_mm = 2.0 * float(self.axes.min())

    @property
    def volume_mm3(self) -> float:
        return 4.0 / 3.0 * np.pi * float(np.prod(self.axes))

    def local(self, x, y, z):
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        if self.rotation is None:
            return dx, dy, dz
        R = self.rotation
        return (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz,
                R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz,
                R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz)

    def sdf(self, x, y, z):
        u, v, w = self.local(x, y, z)
        a = self.axes
        s = np.sqrt((u / a[0]) ** 2 + (v / a[1]) ** 2 + (w / a[2]) ** 2)
        return (s - 1.0) * a.min()

    def scaled(self, factor: float) -> "Ellipsoid":
        return Ellipsoid(self.center, self.axes * factor, self.rotation)

    def grown(self, margin_mm: float) -> "Ellipsoid":
        return Ellipsoid(self.center, self.axes + margin_mm, self.rotation)


class ZTube(Shape):
    """Generalised cylinder along z: elliptic cross-sections with semi-axes a(z), b(z) centred at
    (cx(z), cy(z)), linearly interpolated between knots, cut flat at the first and last knot.

    The in-plane bound (s - 1) min(a, b) is divided by sqrt(1 + m^2), m the steepest change of the
    wall position per mm of z, so it stays a lower bound in 3D.
    """

    def __init__(self, z, a, b, cx=0.0, cy=0.0):
        z = np.asarray(z, dtype=float)
        n = z.size
        if n < 2 or np.any(np.diff(z) <= 0):
            raise ValueError("ZTube knots must be strictly increasing (at least two)")
        self.z = z
        self.a = np.broadcast_to(np.asarray(a, dtype=float), (n,)).copy()
        self.b = np.broadcast_to(np.asarray(b, dtype=float), (n,)).copy()
        self.cx = np.broadcast_to(np.asarray(cx, dtype=float), (n,)).copy()
        self.cy = np.broadcast_to(np.asarray(cy, dtype=float), (n,)).copy()
        if np.any(self.a <= 0) or np.any(self.b <= 0):
            raise ValueError("ZTube semi-axes must be positive")
        dz = np.diff(z)

        def slope(v):
            return np.abs(np.diff(v)) / dz

        m = max((slope(self.a) + slope(self.cx)).max(), (slope(self.b) + slope(self.cy)).max())
        self._cos = 1.0 / np.sqrt(1.0 + m * m)
        self.lo = np.array([(self.cx - self.a).min(), (self.cy - self.b).min(), z[0]])
        self.hi = np.array([(self.cx + self.a).max(), (self.cy + self.b).max(), z[-1]])
        self.feature_mm = 2.0 * float(min(self.a.min(), self.b.min()))

    def profile(self, z):
        """a, b, cx, cy at heights z (clamped to the end knots)."""
        return tuple(np.interp(z, self.z, v) for v in (self.a, self.b, self.cx, self.cy))

    def sdf(self, x, y, z):
        z = np.asarray(z, dtype=float)
        a, b, cx, cy = self.profile(z)
        s = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
        d_xy = (s - 1.0) * np.minimum(a, b) * self._cos
        d_z = np.maximum(self.z[0] - z, z - self.z[-1])
        return np.maximum(d_xy, d_z)


def cylinder(center, a, b, half_height) -> ZTube:
    """Upright elliptic cylinder (vertebral bodies, arches)."""
    cx, cy, cz = (float(v) for v in center)
    return ZTube([cz - half_height, cz + half_height], a, b, cx, cy)


class Tube(Shape):
    """Round tube of constant radius around a polyline (exact distance: min over segments)."""

    def __init__(self, points, radius: float):
        self.points = np.asarray(points, dtype=float)
        if self.points.ndim != 2 or self.points.shape[0] < 2 or self.points.shape[1] != 3:
            raise ValueError("Tube needs an (m >= 2, 3) array of points")
        self.radius = float(radius)
        self.lo = self.points.min(axis=0) - self.radius
        self.hi = self.points.max(axis=0) + self.radius
        self.feature_mm = 2.0 * self.radius

    def sdf(self, x, y, z):
        best = None
        P = self.points
        for a, b in zip(P[:-1], P[1:]):
            ab = b - a
            L2 = float(ab @ ab)
            px, py, pz = x - a[0], y - a[1], z - a[2]
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / L2, 0.0, 1.0) if L2 > 0 else 0.0
            d2 = (px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2
            best = d2 if best is None else np.minimum(best, d2)
        return np.sqrt(best) - self.radius


class HalfSpace(Shape):
    """Points p with n . (p - p0) <= 0 (n is normalised); unbounded."""

    def __init__(self, normal, point):
        n = np.asarray(normal, dtype=float)
        self.normal = n / np.linalg.norm(n)
        self.point = np.asarray(point, dtype=float)
        self.lo = np.full(3, -_INF)
        self.hi = np.full(3, _INF)
        self.feature_mm = _INF

    def sdf(self, x, y, z):
        n, p = self.normal, self.point
        return n[0] * (x - p[0]) + n[1] * (y - p[1]) + n[2] * (z - p[2])


class Intersection(Shape):
    def __init__(self, *shapes: Shape):
        self.shapes = shapes
        self.lo = np.max([s.lo for s in shapes], axis=0)
        self.hi = np.min([s.hi for s in shapes], axis=0)
        self.feature_mm = min(s.feature_mm for s in shapes)

    def sdf(self, x, y, z):
        d = self.shapes[0].sdf(x, y, z)
        for s in self.shapes[1:]:
            d = np.maximum(d, s.sdf(x, y, z))
        return d


class Union(Shape):
    def __init__(self, *shapes: Shape):
        self.shapes = shapes
        self.lo = np.min([s.lo for s in shapes], axis=0)
        self.hi = np.max([s.hi for s in shapes], axis=0)
        self.feature_mm = min(s.feature_mm for s in shapes)

    def sdf(self, x, y, z):
        d = self.shapes[0].sdf(x, y, z)
        for s in self.shapes[1:]:
            d = np.minimum(d, s.sdf(x, y, z))
        return d


class Difference(Shape):
    """``base`` minus every shape in ``cut``."""

    def __init__(self, base: Shape, *cut: Shape):
        self.base, self.cut = base, cut
        self.lo, self.hi = base.lo.copy(), base.hi.copy()
        self.feature_mm = base.feature_mm

    def sdf(self, x, y, z):
        d = self.base.sdf(x, y, z)
        for s in self.cut:
            d = np.maximum(d, -s.sdf(x, y, z))
        return d


def rotation_matrix(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """R = Rz @ Ry @ Rx (angles in degrees about the world axes)."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed rotation (normalised Gaussian quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
