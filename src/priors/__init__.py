"""Score-based priors: NCSN++ networks, the VE SDE, training and sampling."""
