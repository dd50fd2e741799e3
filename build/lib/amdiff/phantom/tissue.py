"""Tissue properties: FDG SUV, CT number (HU) and the CT -> 511 keV attenuation conversion.

SUV values are approximate adult 18F-FDG uptake at ~60 min p.i. (SUVbw, g/mL), recalled from:
  - Boellaard R. et al., "FDG PET/CT: EANM procedure guidelines for tumour imaging: version 2.0",
    EJNMMI 2015 (EARL liver/blood-pool reference ranges);
  - Zincirkeser S. et al., "Standardized uptake values of normal organs on 18F-FDG PET/CT",
    J Int Med Res 2007 (liver ~2.0-2.5, spleen ~1.7-1.9, kidney ~2-3, lung ~0.5-0.7, muscle ~0.7);
  - Paquet N. et al., "Within-patient variability of 18F-FDG: standardized uptake values in normal
    tissues", J Nucl Med 2004 (liver, blood pool, lung, muscle, marrow);
  - common clinical experience for brain (cortex ~7-12), myocardium (1.5-10, fasting dependent),
    urine in the bladder (10-40) and fat (~0.3-0.5).
They are stated as approximate ranges, not as a fit to any data set. HU values are textbook
non-contrast CT numbers at 120 kVp.

Each subject draws one SUV and one HU per tissue: a normal clipped to [lo, hi], or log-uniform
on [lo, hi] for the tissues whose uptake varies over an order of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MU_WATER_511 = 0.096  # 1/cm, water at 511 keV (Carney et al. 2006; Burger et al. 2002)

# Carney JPJ, Townsend DW, Rappoport V, Bendriem B, "Method for transforming CT images for
# attenuation correction in PET/CT imaging", Med Phys 33:976 (2006), Table 1: above the break
# point mu = a (HU + 1000) + b, below it mu = mu_water (HU + 1000) / 1000. BP in HU.
CARNEY_2006 = {
    80: (3.64e-5, 6.26e-2, 50.0),
    100: (4.43e-5, 5.44e-2, 52.0),
    110: (4.92e-5, 4.88e-2, 43.0),
    120: (5.10e-5, 4.71e-2, 47.0),
    130: (5.51e-5, 4.24e-2, 37.0),
    140: (5.64e-5, 4.08e-2, 30.0),
}


def hu_to_mu_511(ct_hu, kvp: int = 120) -> np.ndarray:
    """Bilinear CT (HU) -> linear attenuation coefficient at 511 keV (1/cm), float32.

    Water (0 HU) -> 0.096, air (-1000 HU) -> 0; above the kVp-dependent break point the bone
    segment of Carney et al. (2006) applies (120 kVp: 1000 HU -> 0.149 /cm). Negative results
    (HU < -1000) are clipped to 0.
    """
    if kvp not in CARNEY_2006:
        raise ValueError(f"kvp must be one of {sorted(CARNEY_2006)}, got {kvp}")
    a, b, bp = CARNEY_2006[kvp]
    mu = np.array(ct_hu, dtype=np.float32)      # a copy; 0-d for scalar input
    high = mu > bp
    mu += np.float32(1000.0)                    # CT number on the "water = 1000" scale
    mu_bone = np.float32(a) * mu[high] + np.float32(b)
    mu *= np.float32(MU_WATER_511 / 1000.0)
    mu[high] = mu_bone
    np.clip(mu, 0.0, None, out=mu)
    return mu


@dataclass(frozen=True)
class TissueSpec:
    """Population distribution of one tissue's SUV and HU."""

    suv: tuple[float, float, float, float]   # mean, sd, lo, hi  (sd < 0: log-uniform on [lo, hi])
    hu: tuple[float, float, float, float]    # mean, sd, lo, hi


LOGUNIFORM = -1.0

# name: SUV (mean, sd, lo, hi), HU (mean, sd, lo, hi)
TISSUES: dict[str, TissueSpec] = {
    "fat": TissueSpec((0.35, 0.07, 0.2, 0.5), (-100, 10, -120, -80)),
    "breast": TissueSpec((0.5, 0.1, 0.3, 0.8), (-60, 15, -90, -20)),
    # abdominal/mediastinal mixture of bowel, vessels and fat
    "soft": TissueSpec((0.9, 0.15, 0.6, 1.3), (20, 8, 0, 40)),
    "muscle": TissueSpec((0.7, 0.1, 0.5, 1.0), (50, 5, 40, 60)),
    "lung": TissueSpec((0.55, 0.08, 0.35, 0.8), (-850, 30, -900, -780)),
    "liver": TissueSpec((2.2, 0.3, 1.6, 3.0), (55, 6, 45, 70)),
    "spleen": TissueSpec((1.8, 0.25, 1.3, 2.5), (45, 5, 35, 55)),
    "kidney": TissueSpec((2.5, 0.4, 1.8, 3.5), (32, 5, 25, 40)),
    "blood": TissueSpec((1.75, 0.2, 1.3, 2.2), (40, 5, 30, 50)),
    "myocardium": TissueSpec((0.0, LOGUNIFORM, 1.5, 10.0), (45, 5, 35, 55)),
    "brain_gm": TissueSpec((9.0, 1.5, 6.5, 12.0), (38, 3, 32, 45)),
    "brain_wm": TissueSpec((3.6, 0.6, 2.5, 5.0), (28, 3, 22, 34)),
    "urine": TissueSpec((0.0, LOGUNIFORM, 10.0, 40.0), (8, 4, 0, 15)),
    "cord": TissueSpec((1.1, 0.15, 0.8, 1.5), (25, 5, 15, 35)),
    # red marrow in cancellous bone (vertebral bodies, sternum)
    "marrow": TissueSpec((1.5, 0.25, 1.0, 2.2), (250, 40, 150, 350)),
    "pelvis": TissueSpec((1.25, 0.2, 0.9, 1.8), (400, 50, 300, 500)),
    "femoral_head": TissueSpec((1.0, 0.15, 0.7, 1.4), (350, 50, 250, 450)),
    # thin cortical/cancellous mixtures: ribs, clavicles, scapulae, vertebral arches
    "bone_mixed": TissueSpec((0.9, 0.15, 0.6, 1.3), (600, 60, 500, 700)),
    "cortical": TissueSpec((0.4, 0.08, 0.25, 0.6), (1100, 100, 900, 1300)),
    "skull": TissueSpec((0.7, 0.1, 0.5, 1.0), (900, 80, 750, 1050)),
    # fatty (yellow) marrow in long-bone shafts
    "yellow_marrow": TissueSpec((0.6, 0.1, 0.4, 0.9), (-30, 20, -70, 10)),
    "airway": TissueSpec((0.0, 0.0, 0.0, 0.0), (-950, 10, -980, -920)),
}

# Literature ranges of SUVmean that tests and reports compare against (organ class -> range).
ORGAN_SUV_RANGE = {
    "liver": (1.6, 3.0),
    "lung": (0.35, 0.8),
    "spleen": (1.3, 2.5),
    "kidney": (1.8, 3.5),
    "blood": (1.3, 2.2),
    "muscle": (0.5, 1.0),
    "marrow": (1.0, 2.2),
}


def _draw(rng: np.random.Generator, mean, sd, lo, hi) -> float:
    if sd == LOGUNIFORM:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(np.clip(rng.normal(mean, sd), lo, hi)) if sd > 0 else float(mean)


def sample_tissues(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """One subject's tissue values: {name: {"suv": ..., "hu": ...}} (fixed draw order)."""
    out = {}
    for name, spec in TISSUES.items():
        suv = _draw(rng, *spec.suv)
        hu = _draw(rng, *spec.hu)
        out[name] = {"suv": suv, "hu": hu}
    # Urine collected in the renal pelvis is less concentrated than the bladder's.
    out["renal_urine"] = {"suv": 0.4 * out["urine"]["suv"], "hu": out["urine"]["hu"]}
    out["air"] = {"suv": 0.0, "hu": -1000.0}
    return out
