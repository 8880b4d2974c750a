"""Command-line entry points: `scorelens-train` (train.py), `scorelens-infer` (infer.py) and `scorelens-data`.

They compose the Hydra configs of `conf/` (installed as `scorelens.conf`) and hand the composed settings to the
library as arguments; nothing below them reads a config file by its path.
"""
