"""List-mode data: PETSIRD headers (header), event I/O (petsird_io), non-overlapping down-sampling
(downsample) and event simulation (simulate, on amdiff.physics). Count-level names are amdiff.levels."""
