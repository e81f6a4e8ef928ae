"""The error a malformed or unsupported checkpoint raises."""


class CheckpointError(ValueError):
    """A checkpoint quantops cannot load as it is: the message names the file or tensor and what was expected."""
