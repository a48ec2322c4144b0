"""GFPGAN v1.3/v1.4 face restoration on cached upright heads (network from spandrel, loader and runner here)."""
from .enhancer import GfpganEnhancer, load_gfpgan

__all__ = ["GfpganEnhancer", "load_gfpgan"]
