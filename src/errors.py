"""The exception for bad user input (files, configs, checkpoints): entry points print its message as one line.

Errors that code must tell apart have their own subclass of `InputError`, to be caught by type (never by matching
their text).
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Something the user gave (a file, a config value, a checkpoint) cannot be used; the message says what to fix."""


class DifferentMockError(InputError):
    """A mock folder already holds a complete mock of other settings (another seed, say): its files are not those
    of the mock asked for, and are neither used nor replaced.

    Attributes:
        root: the mock folder.
        seed: the seed of the mock it holds (None when its truth.json does not say).
    """

    def __init__(self, root: str | Path, seed: int | None):
        self.root = Path(root)
        self.seed = seed
        super().__init__(f"{self.root} holds a different mock (seed {seed}); pass overwrite=True (--overwrite) or "
                         "choose another directory")

    def __reduce__(self):  # unpickled (by a process pool, say) from its own arguments, not from the message
        return type(self), (self.root, self.seed)


class PoorFitError(Exception):
    """A run finished and wrote its results, but its model fits the data far worse than the noise allows (reduced
    chi^2 above `chi2_max`, or not finite): entry points log the message and exit with status 3."""


class TangentPlaneError(InputError):
    """Sky positions more than 90 degrees from the lens, which its tangent plane cannot hold."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (FITS and WCS errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__
