"""Posterior samples of a lens model: python infer.py lens=NAME [group=option ...] [key=value ...]"""

from scorelens.cli.infer import main

if __name__ == "__main__":
    main()
