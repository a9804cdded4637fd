"""Run-time tuning of the process: collections and ticks on a clock."""
