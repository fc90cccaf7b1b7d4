"""Exceptions that reach the user.

``OvlabelError`` means "the user asked for something we cannot do": its message names the bad value and
what would be accepted, and the CLI prints it without a traceback and exits with code 2. Anything else is
a bug and keeps its traceback.
"""


class OvlabelError(Exception):
    """A user-facing error: bad input, bad option value, missing weights."""


class WeightsUnavailable(OvlabelError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline machine)."""


class ImageDecodeError(Exception):
    """One image could not be read; the run records the reason and goes on."""
