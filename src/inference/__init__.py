"""Posterior sampling: likelihoods, the posterior SDE of the pixelated images, MALA for the mass and shifts, the
Gibbs sampler and its stages, results and figures."""
