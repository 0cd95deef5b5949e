"""pomstream: streaming video generation with the Polynomial Mixer."""

__version__ = "0.1.0"
