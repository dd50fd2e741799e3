"""Quality control: per-subject MIP figure and the cohort summary table (paper Table 1)."""

from amdiff.qc.figures import QCFigureInfo, image_stats, level_percent, qc_figure
from amdiff.qc.summary import (cohort_markdown, cohort_summary, lesion_stats_from_masks,
                               write_cohort_summary)

__all__ = ["QCFigureInfo", "image_stats", "level_percent", "qc_figure", "cohort_markdown",
           "cohort_summary", "lesion_stats_from_masks", "write_cohort_summary"]
