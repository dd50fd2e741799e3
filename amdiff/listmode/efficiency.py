"""Detection efficiency of any pair of detection bins, from a PETSIRD header, vectorised.

PETSIRD's model (DetectionEfficiencies, as petsird.helpers.get_detection_efficiency computes
it for one pair): calibration factor x detection_bin_efficiencies[t1][b1] x
detection_bin_efficiencies[t2][b2] x module_pair_efficiencies[SGID][bin in module 1][bin in
module 2], with SGID = module_pair_sgidlut[t1][t2][module 1][module 2]; SGID -1 means the
module pair records no coincidences (efficiency 0); a component that is absent counts as 1.
``PairEfficiency`` evaluates it without the calibration factor (the reconstruction scales by
it separately) for arrays of detection bins; tests hold it to petsird's helper.
"""

from __future__ import annotations

import numpy as np
import petsird

from amdiff.errors import InputError


class PairEfficiency:
    def __init__(self, header: petsird.Header, source=None):
        info = header.scanner
        eff = info.detection_efficiencies
        self.per_module = []        # detection bins per module of each type
        for t, rep in enumerate(info.scanner_geometry.replicated_modules):
            n_el = len(rep.object.detecting_elements.transforms)
            self.per_module.append(n_el * max(1, int(info.event_energy_bin_edges[t].number_of_bins())))
        self.bin_eff = [np.asarray(e, dtype=np.float64) if e is not None and len(e) else None
                        for e in (eff.detection_bin_efficiencies if eff else [])]
        self.lut, self.pairs = {}, {}
        n_types = len(self.per_module)
        try:
            for i in range(n_types):
                for j in range(i + 1):
                    self.lut[i, j] = self._lut(eff, i, j)
                    vectors = (eff.module_pair_efficiencies_vectors[i][j]
                               if eff and eff.module_pair_efficiencies_vectors else [])
                    self.pairs[i, j] = (np.stack([np.asarray(v.values, dtype=np.float64) for v in
                                                  sorted(vectors, key=lambda v: v.sgid)])
                                        if vectors else None)
        except (IndexError, TypeError, ValueError) as err:
            raise InputError(source or "PETSIRD header", f"unreadable detection efficiencies "
                             f"({type(err).__name__}: {err})") from None

    @staticmethod
    def _lut(eff, i: int, j: int):
        if not eff or not eff.module_pair_sgidlut:
            return None
        rows = eff.module_pair_sgidlut[i][j]
        if rows is None or not len(rows):
            return None
        width = max(len(r) for r in rows)
        lut = np.full((len(rows), width), -1, dtype=np.int64)   # a triangular LUT: -1 elsewhere
        for k, row in enumerate(rows):
            lut[k, :len(row)] = np.asarray(row, dtype=np.int64)
        return lut

    def __call__(self, type_pair: tuple[int, int], bins: np.ndarray) -> np.ndarray:
        """Efficiencies (n,) of coincidences ``bins`` (n, >=2) of module-type pair
        (t1, t2), t1 >= t2, the first bin in a module of type t1; calibration factor excluded."""
        t1, t2 = type_pair
        b1, b2 = (np.asarray(bins)[:, k].astype(np.int64) for k in (0, 1))
        out = np.ones(len(b1), dtype=np.float64)
        for t, b in ((t1, b1), (t2, b2)):
            if t < len(self.bin_eff) and self.bin_eff[t] is not None:
                out *= self.bin_eff[t][b]
        lut = self.lut.get((t1, t2))
        if lut is not None:
            m1, m2 = b1 // self.per_module[t1], b2 // self.per_module[t2]
            inside = (m1 < lut.shape[0]) & (m2 < lut.shape[1])
            sgid = np.full(len(b1), -1, dtype=np.int64)
            sgid[inside] = lut[m1[inside], m2[inside]]
            values = self.pairs.get((t1, t2))
            ok = sgid >= 0
            if values is not None:
                out[ok] *= values[sgid[ok], b1[ok] % self.per_module[t1], b2[ok] % self.per_module[t2]]
            out[~ok] = 0.0
        return out
