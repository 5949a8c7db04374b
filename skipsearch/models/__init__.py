"""Networks skipsearch can tune: EDM reimplementations, their safe loader and the built-in demo."""

from .edm import DhariwalUNet, EDMPrecond, SongUNet

__all__ = ["EDMPrecond", "SongUNet", "DhariwalUNet"]
