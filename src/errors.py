"""The exception for bad user input (files, configs, checkpoints): entry points print its message as one line."""


class InputError(ValueError):
    """Something the user gave (a file, a config value, a checkpoint) cannot be used; the message says what to fix."""
