"""Particle extraction and particle-stack helpers."""
