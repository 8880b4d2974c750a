"""The data, by subject: HST exposures and co-adds as cutouts with their sky grids (`observations`), stars, ePSFs,
PSF libraries and the exposures' PSF model (`psf`), the priors' training sets (`training`), simulated lenses,
light profiles and PSFs (`simulate`), and the SLACS catalogue (`catalog`)."""
