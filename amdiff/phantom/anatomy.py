"""Parametric adult anatomy in physical millimetres.

All landmarks are written for a reference adult male of 1700 mm (``h`` = height above the soles,
x = patient left, y = anterior) and mapped to world coordinates by a per-subject frame:
x' = sx x, y' = sy y, z' = k h + z0 with k = height / 1700 mm. Organ-specific jitter (scale,
shift, small rotation) adds inter-subject variation on top of body size. Landmark heights follow
common anthropometric proportions (shoulder ~0.82 H, iliac crest ~0.6 H, hip joint ~0.52 H,
pubis ~0.51 H) and are approximate.

The result is an ordered list of ``Structure`` objects that the generator paints back to front:
later structures replace earlier ones by their fractional occupancy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from amdiff.contracts import ORGAN_CLASSES
from amdiff.phantom.raster import Grid
from amdiff.phantom.shapes import (Difference, Ellipsoid, HalfSpace, Intersection, Shape, Tube,
                                   Union, ZTube, cylinder, rotation_matrix)

H_REF = 1700.0
MIN_XY_FIT_SCALE = 0.6

# Organ label values (DESIGN.md data contract).
BACKGROUND, LIVER, LUNG, BONE, MUSCLE, KIDNEY, SPLEEN, AORTA = range(8)
ORGAN_NAMES = ORGAN_CLASSES   # label value -> name, the shared contract

# Lean torso (no subcutaneous fat): h, half-width a, half-depth b, centre y.
TORSO_LEAN = np.array([
    (800, 140, 92, 0), (850, 148, 98, 0), (900, 150, 100, -2), (960, 145, 99, -2),
    (1020, 134, 100, 0), (1080, 134, 100, 0), (1140, 140, 102, 0), (1220, 148, 106, 0),
    (1300, 152, 104, -5), (1360, 156, 98, -10), (1400, 148, 86, -15), (1425, 118, 70, -15),
    (1440, 70, 58, -10),
], dtype=float)
# Share of the abdominal fat thickness found laterally / antero-posteriorly at each knot.
TORSO_FAT = np.array([(800, 0.9), (960, 0.9), (1040, 1.0), (1120, 0.9), (1200, 0.55),
                      (1380, 0.45), (1440, 0.3)], dtype=float)
# Body cavity inside the muscle wall: h, half-width, anterior y, posterior y.
CAVITY = np.array([
    (840, 45, 52, -35), (880, 60, 66, -50), (940, 90, 76, -52), (1000, 112, 80, -58),
    (1060, 116, 82, -60), (1120, 124, 86, -62), (1180, 130, 89, -68), (1260, 134, 88, -72),
    (1330, 130, 81, -72), (1380, 108, 66, -62), (1410, 72, 48, -50), (1428, 40, 30, -35),
], dtype=float)
# Vertebral-body centre line (kyphosis / lordosis): h, y.
SPINE_Y = np.array([(955, -38), (1000, -30), (1060, -38), (1120, -50), (1180, -55),
                    (1260, -55), (1340, -46), (1390, -30), (1440, -18), (1500, -12)], dtype=float)
# Vertebral levels: name, top h, bottom h, body semi-axes (rx, ry), canal radius, spinous length.
_SEG = [("C", 7, 1500, 1385, (13, 9), 8, 14), ("T", 12, 1385, 1125, (15, 12), 7, 16),
        ("L", 5, 1125, 955, (24, 17), 8, 22)]
# Left lung profile (mirrored for the right): h, a, b, cx, cy.
LUNG_L = np.array([
    (1095, 44, 44, 85, -45), (1120, 60, 65, 82, -25), (1170, 65, 83, 78, -8),
    (1230, 67, 87, 75, -4), (1290, 65, 79, 72, -4), (1345, 55, 61, 64, -10),
    (1390, 37, 39, 54, -16), (1418, 15, 15, 44, -22),
], dtype=float)
THIGH = np.array([(560, 58, 60, 82, 8), (700, 66, 66, 84, 6), (800, 72, 70, 86, 4),
                  (880, 74, 72, 88, 2)], dtype=float)
ARM = np.array([(800, 24, 20, 10), (1000, 36, 33, 6), (1070, 34, 32, 0), (1250, 42, 42, -6),
                (1380, 46, 48, -10), (1410, 40, 45, -10)], dtype=float)

# Organs with their own random scale / shift / rotation (fixed order keeps draws reproducible).
JITTER_ORGANS = ("liver", "spleen", "kidney_l", "kidney_r", "heart", "lung", "bladder", "brain",
                 "aorta", "bone")


@dataclass
class Body:
    """Subject-level size parameters (sampled by ``sample_body``)."""

    sex: str
    height_cm: float
    weight_kg: float
    bmi: float
    frame_xy: float          # lean frame scale across the body
    fat_mm: float            # abdominal subcutaneous fat thickness
    bladder_ml: float
    breast_scale: float
    jitter: dict = field(default_factory=dict)


def sample_body(rng: np.random.Generator, sex: str | None = None) -> Body:
    """Draw sex, height, BMI and organ jitter.

    Heights ~ adult anthropometric means (male 176 +/- 7 cm, female 163 +/- 6.5 cm); BMI
    25 +/- 3.5 clipped to [18.5, 32]; weight = BMI x height^2.
    """
    draw_sex = "M" if rng.random() < 0.5 else "F"
    sex = draw_sex if sex is None else sex
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    if sex == "M":
        h = float(np.clip(rng.normal(176.0, 7.0), 160.0, 195.0))
    else:
        h = float(np.clip(rng.normal(163.0, 6.5), 148.0, 180.0))
    bmi = float(np.clip(rng.normal(25.0, 3.5), 18.5, 32.0))
    weight = bmi * (h / 100.0) ** 2
    frame = float(np.sqrt(h / 170.0) * (1.0 if sex == "M" else 0.94) * np.exp(rng.normal(0, 0.03)))
    fat = (4.0 + 3.0 * (bmi - 18.5)) * (1.0 if sex == "M" else 1.2)
    bladder_ml = float(np.exp(rng.uniform(np.log(120.0), np.log(450.0))))
    breast = float(rng.uniform(0.6, 1.3))
    jitter = {}
    for name in JITTER_ORGANS:
        jitter[name] = {
            "scale": np.exp(rng.normal(0.0, 0.07, 3)),
            "shift": rng.normal(0.0, 4.0, 3),
            "rot": rng.normal(0.0, 4.0, 3),
        }
    # Solid-organ volumes grow with body mass (volume ~ weight^0.36 on top of the frame scale).
    size = np.exp(rng.normal(0.0, 0.05)) * (weight / 70.0) ** 0.12
    for name in ("liver", "spleen", "kidney_l", "kidney_r", "heart"):
        jitter[name]["scale"] = jitter[name]["scale"] * size
    return Body(sex=sex, height_cm=h, weight_kg=float(weight), bmi=bmi, frame_xy=frame,
                fat_mm=float(fat), bladder_ml=bladder_ml, breast_scale=breast, jitter=jitter)


@dataclass
class Structure:
    """One painted object: shape, tissue key, organ label, and whether lesions must avoid it."""

    name: str
    shape: Shape
    tissue: str
    label: int = BACKGROUND
    avoid: bool = True


@dataclass
class Anatomy:
    structures: list[Structure]
    hosts: dict[str, list[tuple[str, Shape, str]]]  # region -> (structure name, shape, tissue)
    stations: dict[str, list[Shape]]               # lymph-node stations and soft-tissue regions
    body: Shape                                    # whole body outline
    meta: dict


class _Frame:
    """Reference (x, y, h) -> world mm."""

    def __init__(self, sx, sy, k, z0, fat):
        self.sx, self.sy, self.k, self.z0, self.fat = sx, sy, k, z0, fat

    def p(self, x, y, h):
        return np.array([x * self.sx, y * self.sy, h * self.k + self.z0])

    def ax(self, a, b, c):
        return np.array([a * self.sx, b * self.sy, c * self.k])

    def z(self, h):
        return np.asarray(h, float) * self.k + self.z0

    def h(self, z):
        return (np.asarray(z, float) - self.z0) / self.k


def _interp(table, h, col):
    return np.interp(h, table[:, 0], table[:, col])


def _frame_from_axis(zdir) -> np.ndarray:
    """Rotation whose third column is ``zdir`` (normalised)."""
    z = np.asarray(zdir, float)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


class AnatomyBuilder:
    """Builds the structure list of one subject on one grid."""

    def __init__(self, body: Body, grid: Grid, arms: str = "auto", fov_bottom_frac: float = 0.48):
        self.body, self.grid = body, grid
        self.k = body.height_cm * 10.0 / H_REF
        nz, vz = grid.shape[2], grid.voxel_size_mm[2]
        lz = nz * vz
        lo_h, hi_h = 0.40 * H_REF, H_REF + 10.0 / self.k
        if lz >= self.k * (hi_h - lo_h):
            z0 = -self.k * (lo_h + hi_h) / 2.0
            placement = "centred"
        else:
            z0 = -lz / 2.0 - self.k * fov_bottom_frac * H_REF
            placement = "bottom_anchored"
        self.z0, self.placement = z0, placement
        # Arms, then a transverse scale, are adjusted so the body fits the grid's inscribed circle.
        r_fit = float(min(grid.half_extent_mm[:2])) - 0.5 * float(max(grid.voxel_size_mm[:2]))
        with_arms = arms != "none"
        if arms == "auto" and self._outer_radius(1.0, True) > r_fit:
            with_arms = False      # raised above the head, out of the field (clinical routine)
        scale = 1.0
        rmax = self._outer_radius(1.0, with_arms)
        if rmax > r_fit:
            # Shrink across (not along) the body to fit; on very small grids crop instead.
            scale = max(MIN_XY_FIT_SCALE, r_fit / rmax)
        self.arms, self.xy_fit_scale = with_arms, scale
        s = body.frame_xy * scale
        self.f = _Frame(s, s, self.k, z0, body.fat_mm * scale)

    # ------------------------------------------------------------------ outline and fitting
    def _outer_tubes(self, f: _Frame, arms: bool) -> list[Shape]:
        """Skin outline pieces (torso, neck, thighs, arms) as ZTubes, head as an ellipsoid."""
        T = self._torso_table()
        fr = np.interp(T[:, 0], TORSO_FAT[:, 0], TORSO_FAT[:, 1]) * f.fat
        torso = ZTube(f.z(T[:, 0]), T[:, 1] * f.sx + fr, T[:, 2] * f.sy + 0.9 * fr, 0.0,
                      T[:, 3] * f.sy + 0.1 * fr)
        hn = np.array([1415.0, 1530.0])
        neck = ZTube(f.z(hn), np.array([54, 50]) * f.sx + 0.3 * f.fat,
                     np.array([56, 52]) * f.sy + 0.3 * f.fat, 0.0, np.array([-6, 0]) * f.sy)
        head = Ellipsoid(f.p(0, 8, 1592), f.ax(80, 98, 110))
        out = [torso, neck, head]
        for side in (-1, 1):
            out.append(ZTube(f.z(THIGH[:, 0]), THIGH[:, 1] * f.sx + 0.8 * f.fat,
                             THIGH[:, 2] * f.sy + 0.8 * f.fat, side * THIGH[:, 3] * f.sx,
                             THIGH[:, 4] * f.sy))
        if arms:
            xa = self._arm_x(f)
            for side in (-1, 1):
                out.append(ZTube(f.z(ARM[:, 0]), ARM[:, 1] * f.sx + 0.5 * f.fat,
                                 ARM[:, 2] * f.sy + 0.5 * f.fat, side * xa, ARM[:, 3] * f.sy))
        return out

    def _torso_table(self) -> np.ndarray:
        """Lean torso knots; women have ~6 % wider hips and ~3 % narrower chests."""
        T = TORSO_LEAN.copy()
        if self.body.sex == "F":
            T[:, 1] *= np.where(T[:, 0] <= 980, 1.06, 0.97)
        return T

    def _arm_x(self, f: _Frame) -> float:
        """Arms hang just lateral to the widest part of the chest / hips they pass."""
        h = np.linspace(850, 1400, 56)
        T = self._torso_table()
        fr = np.interp(h, TORSO_FAT[:, 0], TORSO_FAT[:, 1]) * f.fat
        torso_a = np.interp(h, T[:, 0], T[:, 1]) * f.sx + fr
        arm_r = np.interp(h, ARM[:, 0], ARM[:, 1]) * f.sx + 0.5 * f.fat
        return float(np.max(torso_a + arm_r)) + 6.0

    def _outer_radius(self, scale: float, arms: bool) -> float:
        """Largest transverse distance from the scanner axis of the skin within the grid's z."""
        s = self.body.frame_xy * scale
        f = _Frame(s, s, self.k, self.z0, self.body.fat_mm * scale)
        zmax = self.grid.half_extent_mm[2]
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        rmax = 0.0
        for sh in self._outer_tubes(f, arms):
            if sh.hi[2] < -zmax or sh.lo[2] > zmax:
                continue
            if isinstance(sh, ZTube):
                zs = np.linspace(max(sh.z[0], -zmax), min(sh.z[-1], zmax), 60)
                a, b, cx, cy = sh.profile(zs)
                x = cx[:, None] + a[:, None] * np.cos(t)
                y = cy[:, None] + b[:, None] * np.sin(t)
            else:
                e = sh
                x = e.center[0] + e.axes[0] * np.cos(t)
                y = e.center[1] + e.axes[1] * np.sin(t)
            rmax = max(rmax, float(np.sqrt(x ** 2 + y ** 2).max()))
        return rmax

    # ------------------------------------------------------------------ helpers
    def _jit(self, name):
        return self.body.jitter[name]

    def _organ_ellipsoid(self, name, center, axes, rot=None):
        """Reference ellipsoid with the organ's jitter applied (shift in mm, rotation in deg)."""
        f, j = self.f, self._jit(name)
        R0 = np.eye(3) if rot is None else rot
        R = rotation_matrix(*j["rot"]) @ R0
        return Ellipsoid(f.p(*center) + j["shift"], f.ax(*axes) * j["scale"], R)

    def cavity_tube(self, grow=0.0) -> ZTube:
        f, C = self.f, CAVITY
        cyr = (C[:, 2] + C[:, 3]) / 2.0
        b = (C[:, 2] - C[:, 3]) / 2.0
        return ZTube(f.z(C[:, 0]), C[:, 1] * f.sx + grow, b * f.sy + grow, 0.0, cyr * f.sy)

    def spine_y(self, h):
        return _interp(SPINE_Y, h, 1)

    def cavity_at(self, h):
        """(a, centre y, b) of the reference cavity at height h (reference units)."""
        a = _interp(CAVITY, h, 1)
        ya, yp = _interp(CAVITY, h, 2), _interp(CAVITY, h, 3)
        return a, (ya + yp) / 2.0, (ya - yp) / 2.0

    # ------------------------------------------------------------------ build
    def build(self) -> Anatomy:
        """Every structure in painting order (later ones paint over earlier ones), the lesion
        host regions and node stations, and the fitting record."""
        S: list[Structure] = []
        outer = self._outline(S)
        cavity = self._cavity(S)
        lungs, liver = self._trunk_organs(S, cavity)
        bone_hosts = self._skeleton(S)
        self._head(S)
        hosts = {
            "lung": [("lung_left", lungs["lung_left"], "lung"),
                     ("lung_right", lungs["lung_right"], "lung")],
            "liver": [("liver", liver, "liver")],
            "bone": bone_hosts,
        }
        body_all = Union(*outer)
        return Anatomy(structures=S, hosts=hosts, stations=self._node_stations(outer, cavity, body_all),
                       body=body_all, meta=self._meta())

    def _outline(self, S: list) -> list[Shape]:
        """1. skin outline filled with subcutaneous fat; 2. breasts; 3. lean body (muscle).
        Returns the outer tubes (torso, neck, head, then limbs)."""
        f, body = self.f, self.body
        add = S.append
        outer = self._outer_tubes(f, self.arms)
        torso_o, neck_o, head = outer[:3]
        for i, sh in enumerate(outer):
            if sh is head:
                continue
            add(Structure(f"fat_{i}", sh, "fat", avoid=False))
        if self.arms:
            xa = self._arm_x(f)
            for side in (-1, 1):
                add(Structure("hand", Ellipsoid(f.p(side * xa / f.sx, 14, 745), f.ax(20, 45, 65)),
                              "soft", avoid=False))
        if body.sex == "F":
            a, b, _, cy = torso_o.profile(f.z(1240))
            for side in (-1, 1):
                c = np.array([side * 0.45 * a, cy + b - 18.0, f.z(1235)])
                ax = np.array([50 * f.sx, 36 * f.sy * body.breast_scale, 50 * f.k])
                add(Structure("breast", Ellipsoid(c, ax), "breast", avoid=False))
        T = self._torso_table()
        torso_l = ZTube(f.z(T[:, 0]), T[:, 1] * f.sx, T[:, 2] * f.sy, 0.0, T[:, 3] * f.sy)
        add(Structure("torso_muscle", torso_l, "muscle", MUSCLE, avoid=False))
        neck_l = ZTube(f.z([1415.0, 1530.0]), np.array([54, 50]) * f.sx,
                       np.array([56, 52]) * f.sy, 0.0, np.array([-6, 0]) * f.sy)
        add(Structure("neck_muscle", neck_l, "muscle", MUSCLE, avoid=False))
        add(Structure("head", head, "soft", avoid=False))
        for side in (-1, 1):
            th = ZTube(f.z(THIGH[:, 0]), THIGH[:, 1] * f.sx, THIGH[:, 2] * f.sy,
                       side * THIGH[:, 3] * f.sx, THIGH[:, 4] * f.sy)
            add(Structure("thigh_muscle", th, "muscle", MUSCLE, avoid=False))
        if self.arms:
            xa = self._arm_x(f)
            for side in (-1, 1):
                arm = ZTube(f.z(ARM[:, 0]), ARM[:, 1] * f.sx, ARM[:, 2] * f.sy, side * xa,
                            ARM[:, 3] * f.sy)
                add(Structure("arm_muscle", arm, "muscle", MUSCLE, avoid=False))
                delt = Ellipsoid(f.p(side * (xa - 18) / f.sx, -10, 1382), f.ax(48, 50, 42))
                add(Structure("deltoid", delt, "muscle", MUSCLE, avoid=False))

        return outer

    def _cavity(self, S: list) -> Shape:
        """4. body cavity (visceral soft tissue) and psoas muscles. Returns the cavity."""
        f = self.f
        add = S.append
        cavity = self.cavity_tube()
        add(Structure("cavity", cavity, "soft", avoid=False))
        for side in (-1, 1):
            pts = [f.p(side * 28, self.spine_y(1112) + 10, 1112), f.p(side * 42, -24, 1030),
                   f.p(side * 56, -12, 960), f.p(side * 66, 18, 900), f.p(side * 70, 34, 865)]
            add(Structure("psoas", Tube(pts, 15.0 * f.sx), "muscle", MUSCLE, avoid=False))

        return cavity

    def _trunk_organs(self, S: list, cavity: Shape) -> tuple[dict, Shape]:
        """5. thorax: diaphragm domes, heart, aorta, airway, lungs; 6. abdomen and pelvis organs.
        Returns the lungs and the liver (lesion hosts)."""
        f, body = self.f, self.body
        add = S.append
        jb = self._jit("heart")
        dome_r = Ellipsoid(f.p(-50, 5, 1045), f.ax(128, 108, 135))
        dome_l = Ellipsoid(f.p(50, 5, 1030), f.ax(128, 108, 130))
        dome = Union(dome_r, dome_l)
        apex_dir = np.array([0.55, 0.42, -0.72])
        Rh = rotation_matrix(*jb["rot"]) @ _frame_from_axis(-apex_dir)
        hc = f.p(18, 28, 1218) + jb["shift"]
        s_h = jb["scale"]
        heart = Ellipsoid(hc, f.ax(50, 44, 62) * s_h, Rh)
        lv_c = hc + Rh @ (np.array([10.0, -8.0, -10.0]) * s_h)
        lv_out = Ellipsoid(lv_c, f.ax(29, 29, 46) * s_h, Rh)
        lv_in = Ellipsoid(lv_c, f.ax(18, 18, 35) * s_h, Rh)
        base_n = Rh[:, 2]
        valve = Intersection(lv_out, HalfSpace(-base_n, lv_c + base_n * 0.55 * lv_out.axes[2]))

        ja = self._jit("aorta")["shift"]
        sp = self.spine_y
        arch_pts = [f.p(4, 22, 1262), f.p(-6, 30, 1305), f.p(2, 34, 1340), f.p(22, 20, 1356),
                    f.p(34, -8, 1348), f.p(30, -30, 1322)]
        desc_pts = [f.p(30, -30, 1322)] + [f.p(28, sp(h) + 14, h) for h in (1290, 1230, 1170)] \
            + [f.p(18, sp(1130) + 24, 1130)]
        abd_pts = [f.p(18, sp(1130) + 24, 1130)] + [
            f.p(10, sp(h) + 30, h) for h in (1090, 1050, 1010)]
        aorta = [Tube(np.array(pts) + ja, r * f.sx)
                 for pts, r in ((arch_pts, 13.5), (desc_pts, 12.0), (abd_pts, 10.0))]
        airway = [Tube([f.p(0, 14, 1500), f.p(0, 8, 1400), f.p(0, -2, 1302)], 9.0 * f.sx)]
        for side in (-1, 1):
            airway.append(Tube([f.p(0, -2, 1302), f.p(side * 34, -8, 1278)], 6.0 * f.sx))

        # abdominal organ shapes (needed to carve the lung bases).
        jk_l, jk_r = self._jit("kidney_l"), self._jit("kidney_r")
        kidneys, pelves = [], []
        for side, jk, hk in ((1, jk_l, 1078), (-1, jk_r, 1060)):
            R = rotation_matrix(*jk["rot"]) @ rotation_matrix(0, -side * 12, side * 35)
            kc = f.p(side * 72, -36, hk) + jk["shift"]
            kid = Ellipsoid(kc, f.ax(29, 23, 56) * jk["scale"], R)
            kidneys.append(kid)
            pelves.append(Ellipsoid(kc + R @ np.array([-side * 14.0, 0, 0]) * f.sx,
                                    f.ax(9, 7, 16) * jk["scale"], R))
        liver_e = self._organ_ellipsoid("liver", (-40, 8, 1090), (120, 95, 90))
        lobe_cut = HalfSpace([0.62, 0, -0.78], f.p(20, 0, 1110))
        liver = Difference(Intersection(liver_e, dome, cavity, lobe_cut),
                           kidneys[1].grown(3.0), heart.grown(3.0))
        spleen_e = self._organ_ellipsoid("spleen", (84, -14, 1125), (24, 55, 50),
                                         rotation_matrix(0, 0, -50))
        spleen = Difference(Intersection(spleen_e, cavity), kidneys[0].grown(3.0))
        jbl = self._jit("bladder")
        bs = (body.bladder_ml / 258.0) ** (1.0 / 3.0)
        bladder_e = Ellipsoid(f.p(0, 14, 895) + jbl["shift"], f.ax(45, 38, 36) * bs)
        bladder = Intersection(bladder_e, self.cavity_tube(grow=-2.0))
        jl = self._jit("lung")
        lungs = {}
        cav_in = self.cavity_tube(grow=-3.0)
        cut = [dome, heart.grown(4.0), lv_out.grown(3.0), spleen_e.grown(3.0)] + [
            Tube(t.points, t.radius + 3.0) for t in aorta[:2]]
        for side, key in ((1, "lung_left"), (-1, "lung_right")):
            L = LUNG_L
            sa = jl["scale"][0] * (1.04 if side < 0 else 1.0)
            tube = ZTube(f.z(L[:, 0]), L[:, 1] * f.sx * sa, L[:, 2] * f.sy * jl["scale"][1],
                         side * L[:, 3] * f.sx, L[:, 4] * f.sy)
            medial = HalfSpace([-side, 0, 0], [side * 14.0 * f.sx, 0, 0])
            lungs[key] = Difference(Intersection(tube, cav_in, medial), *cut)
        for key, sh in lungs.items():
            add(Structure(key, sh, "lung", LUNG))
        add(Structure("heart", heart, "blood"))
        add(Structure("lv_myocardium", lv_out, "myocardium"))
        add(Structure("lv_cavity", lv_in, "blood"))
        add(Structure("lv_valve_plane", valve, "blood"))
        for t in aorta:
            add(Structure("aorta", t, "blood", AORTA))
        for t in airway:
            add(Structure("airway", t, "airway"))

        # 6. abdomen and pelvis organs (shapes made above).
        add(Structure("liver", liver, "liver", LIVER))
        add(Structure("spleen", spleen, "spleen", SPLEEN))
        for kid, pel in zip(kidneys, pelves):
            add(Structure("kidney", kid, "kidney", KIDNEY))
            add(Structure("renal_pelvis", pel, "renal_urine", KIDNEY))
        add(Structure("bladder", bladder, "urine"))

        return lungs, liver

    def _skeleton(self, S: list) -> list[tuple[str, Shape, str]]:
        """7. skeleton: spine and ribs, shoulder girdle, pelvis and femurs, arm bones. Returns the
        bones that host lesions (name, shape, tissue)."""
        return self._spine(S) + self._shoulder_girdle(S) + self._pelvis(S) + self._arm_bones(S)

    def _spine(self, S: list) -> list[tuple[str, Shape, str]]:
        """Vertebrae (body, arch, spinous and transverse processes), ribs, spinal canal."""
        f = self.f
        add = S.append
        bone_hosts: list[tuple[str, Shape, str]] = []
        jbone = self._jit("bone")["scale"]
        canal_pts = []
        for prefix, n, top, bot, rxy, rc, lsp in _SEG:
            step = (top - bot) / n
            for i in range(n):
                name = f"{prefix}{i + 1}"
                hc_ = top - (i + 0.5) * step
                if prefix == "T":
                    frac = i / 11.0
                    rx, ry = 15 + 6 * frac, 12 + 3 * frac
                elif prefix == "L":
                    rx, ry = 24 + 0.5 * i, 17 + 0.25 * i
                else:
                    rx, ry = rxy
                rx, ry = rx * jbone[0], ry * jbone[1]
                yb = self.spine_y(hc_)
                hh = 0.39 * step
                vb = cylinder(f.p(0, yb, hc_), rx * f.sx, ry * f.sy, hh * f.k)
                add(Structure(f"vertebra_{name}", vb, "marrow", BONE))
                if prefix in "TL" or i >= 2:
                    bone_hosts.append((f"vertebra_{name}", vb, "marrow"))
                yc = yb - ry - rc - 1.0
                canal_pts.append(f.p(0, yc, hc_))
                add(Structure("arch", cylinder(f.p(0, yc, hc_), (rc + 6) * f.sx, (rc + 5) * f.sy,
                                               hh * 0.9 * f.k), "bone_mixed", BONE))
                ysp = yc - rc - 4 - lsp / 2.0
                add(Structure("spinous", Ellipsoid(f.p(0, ysp, hc_ - 0.15 * step),
                                                   f.ax(4.5, lsp / 2.0, 0.32 * step)),
                              "bone_mixed", BONE))
                tx = rc + (16 if prefix == "L" else 13)
                for side in (-1, 1):
                    add(Structure("transverse", Ellipsoid(f.p(side * tx, yc + 3, hc_),
                                                          f.ax(13 if prefix == "L" else 10, 5, 5)),
                                  "bone_mixed", BONE))
                if prefix == "T":
                    self._rib(S, i + 1, hc_, rx, yb)
        canal_pts = [canal_pts[0] + f.ax(0, 0, 20)] + canal_pts
        add(Structure("spinal_canal", Tube(canal_pts, 7.0 * f.sx), "cord"))

        return bone_hosts

    def _shoulder_girdle(self, S: list) -> list[tuple[str, Shape, str]]:
        """Sternum (three tubes make it ~30 mm wide and ~16 mm thick), clavicles, scapulae."""
        f = self.f
        add = S.append
        bone_hosts: list[tuple[str, Shape, str]] = []
        st_h = np.array([1382, 1340, 1290, 1240, 1198])
        for dx in (-7.0, 0.0, 7.0):
            pts = [f.p(dx, self.cavity_at(h)[1] + self.cavity_at(h)[2] + 7.0, h) for h in st_h]
            sh = Tube(pts, 8.0 * f.sx)
            add(Structure("sternum", sh, "marrow", BONE))
            if dx == 0.0:
                bone_hosts.append(("sternum", sh, "marrow"))
        for side in (-1, 1):
            pts = [f.p(side * 18, 50, 1388), f.p(side * 70, 46, 1396), f.p(side * 130, -20, 1405)]
            add(Structure("clavicle", Tube(pts, 7.0 * f.sx), "bone_mixed", BONE))
            ang = -56.0 if side > 0 else -124.0
            scap = Ellipsoid(f.p(side * 100, -70, 1320), f.ax(7, 45, 72),
                             rotation_matrix(0, 0, ang))
            add(Structure("scapula", scap, "bone_mixed", BONE))

        return bone_hosts

    def _pelvis(self, S: list) -> list[tuple[str, Shape, str]]:
        """Iliac wings, pubic rings, acetabula, sacrum and proximal femurs."""
        f = self.f
        add = S.append
        bone_hosts: list[tuple[str, Shape, str]] = []
        for side in (-1, 1):
            wing = Ellipsoid(f.p(side * 80, -15, 995), f.ax(9, 57, 50),
                             rotation_matrix(0, 0, -side * 37.7))
            add(Structure("iliac_wing", wing, "pelvis", BONE))
            bone_hosts.append(("iliac_wing", wing, "pelvis"))
            ring = [f.p(side * 78, 2, 895), f.p(side * 42, 52, 882), f.p(side * 7, 66, 872),
                    f.p(side * 30, 48, 846), f.p(side * 55, -18, 836), f.p(side * 70, -30, 860),
                    f.p(side * 78, -8, 892)]
            add(Structure("pubic_ring", Tube(ring, 8.0 * f.sx), "pelvis", BONE))
            add(Structure("acetabulum", Ellipsoid(f.p(side * 84, -4, 912), f.ax(24, 28, 18)),
                          "pelvis", BONE))
        sac = Ellipsoid(f.p(0, -64, 925), f.ax(44, 15, 55), rotation_matrix(-25, 0, 0))
        add(Structure("sacrum", sac, "pelvis", BONE))
        bone_hosts.append(("sacrum", sac, "pelvis"))
        for side in (-1, 1):
            fh = Ellipsoid(f.p(side * 86, 2, 888), f.ax(23, 23, 23))
            add(Structure("femoral_head", fh, "femoral_head", BONE))
            bone_hosts.append(("femoral_head", fh, "femoral_head"))
            add(Structure("femoral_neck", Tube([f.p(side * 86, 2, 888), f.p(side * 118, -4, 862)],
                                               14.0 * f.sx), "femoral_head", BONE))
            add(Structure("trochanter", Ellipsoid(f.p(side * 126, -8, 870), f.ax(15, 19, 24)),
                          "femoral_head", BONE))
            shaft = [f.p(side * 120, -4, 862), f.p(side * 100, 8, 560)]
            add(Structure("femur_shaft", Tube(shaft, 14.0 * f.sx), "cortical", BONE))
            canal = [f.p(side * 119.3, -3.6, 850), f.p(side * 100, 8, 560)]
            add(Structure("femur_canal", Tube(canal, 7.0 * f.sx), "yellow_marrow", BONE))

        return bone_hosts

    def _arm_bones(self, S: list) -> list[tuple[str, Shape, str]]:
        """Humeri and forearm bones, where the arms are in the field."""
        f = self.f
        add = S.append
        bone_hosts: list[tuple[str, Shape, str]] = []
        if self.arms:
            xa = self._arm_x(f) / f.sx
            for side in (-1, 1):
                hh_ = Ellipsoid(f.p(side * (xa - 8), -10, 1385), f.ax(22, 22, 22))
                add(Structure("humeral_head", hh_, "femoral_head", BONE))
                bone_hosts.append(("humeral_head", hh_, "femoral_head"))
                shaft = [f.p(side * xa, -9, 1378), f.p(side * xa, -2, 1080)]
                add(Structure("humerus", Tube(shaft, 11.0 * f.sx), "cortical", BONE))
                add(Structure("humerus_canal", Tube([f.p(side * xa, -8.6, 1360), shaft[1]],
                                                    5.0 * f.sx), "yellow_marrow", BONE))
                for dx in (-10.0, 10.0):
                    fa = [f.p(side * xa + dx, 2, 1062), f.p(side * xa + dx * 1.2, 10, 825)]
                    add(Structure("forearm_bone", Tube(fa, 7.0 * f.sx), "cortical", BONE))

        return bone_hosts

    def _head(self, S: list) -> None:
        """8. head: brain (grey shell, white core, deep nuclei), skull vault and base, mandible."""
        f = self.f
        add = S.append
        jbr = self._jit("brain")
        bc = f.p(0, 5, 1620) + jbr["shift"]
        bax = f.ax(65, 80, 58) * jbr["scale"]
        brain = Ellipsoid(bc, bax)
        add(Structure("brain", brain, "brain_gm"))
        add(Structure("brain_wm", Ellipsoid(bc, bax - 11.0), "brain_wm"))
        for side in (-1, 1):
            add(Structure("deep_nuclei", Ellipsoid(bc + f.ax(side * 20, 2, -8), f.ax(11, 17, 11)),
                          "brain_gm"))
        # ~7 mm calvarium over a ~4 mm CSF/meninges layer
        vault = Intersection(Difference(brain.grown(11.0), brain.grown(4.0)),
                             HalfSpace([0, 0, -1], [0, 0, bc[2] - 40.0 * f.k]))
        add(Structure("skull", vault, "skull", BONE))
        add(Structure("skull_base", Ellipsoid(bc - np.array([0, 0, bax[2] + 6.0]),
                                              f.ax(50, 68, 5)), "skull", BONE))
        mand = [f.p(-46, -12, 1532), f.p(-44, 30, 1500), f.p(-24, 62, 1486), f.p(0, 72, 1483),
                f.p(24, 62, 1486), f.p(44, 30, 1500), f.p(46, -12, 1532)]
        add(Structure("mandible", Tube(mand, 7.0 * f.sx), "cortical", BONE))


    def _node_stations(self, outer: list[Shape], cavity: Shape, body_all: Shape) -> dict:
        """Regions where nodal and soft-tissue lesions are placed."""
        f, sp = self.f, self.spine_y
        torso_o, neck_o = outer[0], outer[1]
        ab_lo, ab_hi = f.z(905), f.z(1085)
        stations = {
            "node_mediastinal": [Ellipsoid(f.p(0, 6, 1305), f.ax(34, 40, 52))],
            "node_para_aortic": [Ellipsoid(f.p(8, sp(1050) + 28, 1050), f.ax(42, 26, 70))],
            "node_axillary": [Intersection(Ellipsoid(f.p(s * 142, -6, 1335), f.ax(30, 40, 34)),
                                           torso_o) for s in (-1, 1)],
            "node_inguinal": [Intersection(Ellipsoid(f.p(s * 70, 62, 850), f.ax(30, 26, 32)),
                                           body_all) for s in (-1, 1)],
            "node_cervical": [Intersection(Ellipsoid(f.p(s * 34, 8, 1450), f.ax(20, 28, 42)),
                                           neck_o) for s in (-1, 1)],
            "soft_tissue": [Intersection(cavity, HalfSpace([0, 0, -1], [0, 0, ab_lo]),
                                         HalfSpace([0, 0, 1], [0, 0, ab_hi]))],
        }
        return stations

    def _meta(self) -> dict:
        """How the body was fitted to the grid."""
        f = self.f
        return {
            "placement": self.placement,
            "arms": "sides" if self.arms else "none",
            "xy_fit_scale": round(self.xy_fit_scale, 4),
            "frame_xy": round(f.sx, 4),
            "z_scale": round(self.k, 4),
            "fat_mm": round(f.fat, 2),
            # heights above the soles (mm) seen at the bottom and top of the grid
            "fov_height_range_mm": [round(float(-self.grid.half_extent_mm[2] - self.z0), 1),
                                    round(float(self.grid.half_extent_mm[2] - self.z0), 1)],
        }

    def _rib(self, S, n: int, hc: float, rx: float, yb: float) -> None:
        """Rib n runs from the costovertebral joint round the cavity wall, dropping anteriorly."""
        f = self.f
        end = 70.0 if n <= 7 else 55.0 if n <= 10 else {11: 10.0, 12: -25.0}[n]   # degrees
        drop = {1: 25.0, 2: 40.0}.get(n, 60.0 if n <= 8 else 70.0 if n <= 10 else 35.0)
        for side in (-1, 1):
            pts = [f.p(side * (rx + 6.0), yb - 4.0, hc)]
            a0, cy0, b0 = self.cavity_at(hc)
            phi0 = -np.arccos(min(0.95, 48.0 / (a0 + 7.0)))
            for t in np.linspace(0.0, 1.0, 10):
                phi = phi0 + t * (np.deg2rad(end) - phi0)
                h = hc - drop * t
                a, cy, b = self.cavity_at(h)
                pts.append(f.p(side * (a + 7.0) * np.cos(phi), cy + (b + 7.0) * np.sin(phi), h))
            S.append(Structure("rib", Tube(pts, 5.0 * f.sx), "bone_mixed", BONE))
