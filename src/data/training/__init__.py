"""What the three priors train on: galaxy images, image stacks and PSF files as datasets, streams of simulated lens
light, sources and PSFs, the datamodule that serves them, and the flux <-> network-unit map."""
