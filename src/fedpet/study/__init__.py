"""Studies: a grid of ordinary runs, executed in one process, summarized in tables and plots."""
