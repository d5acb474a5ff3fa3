"""Reporting across models: the summary table and figures, and the leakage audit."""
