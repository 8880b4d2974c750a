"""Simulated images with known truth: Sersic profiles, an HST-like PSF, and mock lens systems written as FLT-like
exposures (`mock`)."""
