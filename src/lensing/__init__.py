"""Lensing physics: mass profiles, ray tracing, PSF convolution and binning, the multi-exposure forward model.

This package imports nothing else of scorelens, so it can be used and tested on its own.
"""
