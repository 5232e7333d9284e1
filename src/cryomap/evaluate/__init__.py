"""Scoring predicted maps: metrics, FSC, alignment, the physics reconstruction baseline, reports."""
