"""Errors raised while resolving and loading presets.

Every message names the file or field at fault and says what to do about it.
"""


class PresetError(ValueError):
    """A preset could not be resolved, loaded or saved (bad path, bad file, unsupported model)."""


class UnsupportedModelError(PresetError):
    """The checkpoint describes a model family this package does not implement."""


class CheckpointFormatError(PresetError):
    """A checkpoint file is truncated, corrupt (non-finite weights, text that is not UTF-8, a
    symlink loop), or does not match its config."""
