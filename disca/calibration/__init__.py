"""Calibration from real sampling trajectories: FP8 ranges and (later) the anchor schedule."""
