"""Strongroom: a sensitive-data hub for medical imaging AI research."""

__version__ = "0.1.0"
