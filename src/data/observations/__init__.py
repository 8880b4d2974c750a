"""A lens's imaging data as the sampler models it: FLT/FLC exposures and co-adds read into square cutouts with
their noise, masks, sky and pixel -> sky grids (`ExposureSet`); `load_lens` picks the reader for a lens config;
`mast` downloads the exposures."""
