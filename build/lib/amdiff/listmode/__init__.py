"""List-mode data: PETSIRD I/O (petsird_io), count-level names (levels), non-overlapping
down-sampling (downsample), event simulation (simulate) and LOR histograms (histogram)."""
