"""scorelens' Hydra configs, installed as the package `scorelens.conf` (Hydra's `pkg://scorelens.conf`)."""
