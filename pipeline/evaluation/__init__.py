"""Scores of generated faces: Inception features, the cached real-image reference, FID/KID/PR, plots."""
