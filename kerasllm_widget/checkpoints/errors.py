"""Errors raised while resolving and loading presets.

Every message names the file or field at fault and says what to do about it.
"""


class PresetError(ValueError):
    """A preset could not be resolved or loaded (bad path, bad file, unsupported model)."""


class UnsupportedModelError(PresetError):
    """The checkpoint describes a model family this package does not implement."""


class CheckpointFormatError(PresetError):
    """A checkpoint file is truncated, corrupt, or does not match its config."""
