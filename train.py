"""Train a score prior: `python train.py prior=source|lens_light|psf [overrides]` (see conf/train.yaml)."""

from scorelens.cli.train import main

if __name__ == "__main__":
    main()
