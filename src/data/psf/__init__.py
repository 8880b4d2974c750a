"""PSFs from the data: stars found in the exposures, effective PSFs built from them, the exposures' PSF model that
inference uses (`exposure_psfs`), and PSF files and stacks for the PSF prior (`library`)."""
