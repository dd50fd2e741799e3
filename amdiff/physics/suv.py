"""Activity concentration (Bq/mL) <-> SUV (g/mL).

SUV = C * weight_g / injected_Bq. The simulated activity is decay-corrected to the injection
time (the simulator builds the activity from the injected dose directly, with no decay during
uptake or the scan), so no decay correction is applied here; for real data whose concentration
is referenced to the scan start, correct the injected activity to that time before calling.
"""

from __future__ import annotations

import numpy as np


def _check(weight_kg: float, injected_mbq: float) -> None:
    if not weight_kg > 0:
        raise ValueError(f"body weight must be positive, got {weight_kg} kg")
    if not injected_mbq > 0:
        raise ValueError(f"injected activity must be positive, got {injected_mbq} MBq")


def concentration_to_suv(concentration_bqml, weight_kg: float, injected_mbq: float) -> np.ndarray:
    """SUV (g/mL) = C (Bq/mL) * weight (g) / injected activity (Bq)."""
    _check(weight_kg, injected_mbq)
    c = np.asarray(concentration_bqml, dtype=np.float64)
    return (c * (weight_kg * 1000.0) / (injected_mbq * 1e6)).astype(np.float32)


def suv_to_concentration(suv, weight_kg: float, injected_mbq: float) -> np.ndarray:
    """C (Bq/mL) = SUV (g/mL) * injected activity (Bq) / weight (g)."""
    _check(weight_kg, injected_mbq)
    s = np.asarray(suv, dtype=np.float64)
    return (s * (injected_mbq * 1e6) / (weight_kg * 1000.0)).astype(np.float32)
