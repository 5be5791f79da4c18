"""Converters: one module per source framework, each returning a fidelity-checked ModelPackage."""

from inferd.convert.pytorch import convert_pytorch

__all__ = ["convert_pytorch"]
