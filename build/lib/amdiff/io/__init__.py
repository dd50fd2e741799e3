"""File input/output with geometry checks and atomic writes."""
