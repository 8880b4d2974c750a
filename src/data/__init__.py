"""Datasets and datamodules for the priors and the lens data."""
