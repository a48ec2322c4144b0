"""Offline preprocessing: source videos -> per-video caches for the live engine (and an LRS2-style training set)."""
