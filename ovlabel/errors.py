"""Exceptions that reach the user.

``OvlabelError`` means "the user asked for something we cannot do": its message names the bad value and
what would be accepted, and the CLI prints it on one line (no traceback) and exits with its
``exit_code``: 2 for bad input or a bad location found before any work, 1 for a run that failed on the
way (:class:`OutputError`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno as _errno
import os


class OvlabelError(Exception):
    """A user-facing error: bad input, bad option value, missing weights."""

    #: the CLI's exit status for this error
    exit_code = 2


class WeightsUnavailable(OvlabelError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline machine)."""


class SettingError(OvlabelError):
    """A setting's value is out of its accepted range: ``name`` (a config field, or once
    :func:`ovlabel.config.files.build` knows it, the dotted setting such as ``detect.min_crops``), ``value``
    and ``accepted``. The CLI renders it with the option that sets it (``--min-crops 0 is invalid: ...``);
    Python and config files see the setting's name."""

    def __init__(self, name: str, value, accepted: str):
        self.name, self.value, self.accepted = name, value, accepted
        super().__init__(self.render(name))

    def render(self, label: str, value: str | None = None) -> str:
        shown = repr(self.value) if value is None else value
        sep = " " if label.startswith("-") else "="
        return f"{label}{sep}{shown} is invalid: expected {self.accepted}"

    def under(self, prefix: str) -> "SettingError":
        """The same error for the setting inside the nested config ``prefix`` (``detect.``)."""
        return SettingError(prefix + self.name, self.value, self.accepted)


class RunFailed(OvlabelError):
    """A run that started failed on the way (exit status 1); what it finished is kept for the next run."""

    exit_code = 1


class OutputError(RunFailed):
    """An output could not be written (read-only file system, no permission, disk full, ...): names the
    path and the operating system's reason. Exit status 1: what was complete before stays complete."""

    exit_code = 1

    def __init__(self, path, exc: OSError, doing: str = "write", exit_code: int = 1):
        self.path, self.errno, self.exit_code = str(path), exc.errno, exit_code
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        hint = _OUTPUT_HINTS.get(exc.errno, "")
        super().__init__(f"cannot {doing} '{self.path}': {reason}{hint}")


_OUTPUT_HINTS = {
    _errno.ENOSPC: " (the disk is full: free space or choose another --out; finished images are kept, rerun to "
                   "resume)",
    _errno.EDQUOT: " (disk quota exceeded: free space or choose another --out; finished images are kept)",
    _errno.EROFS: " (read-only file system: choose another --out)",
    _errno.EACCES: " (no permission: choose a folder you can write, or fix its permissions)",
    _errno.EPERM: " (not permitted: choose a folder you can write, or fix its permissions)",
}


class ImageDecodeError(Exception):
    """One image could not be read; the run records the reason and goes on."""


class ImageSkipped(ImageDecodeError):
    """An input ovlabel does not label by rule (an animated image, more pixels than ``--max-pixels``, a
    folder named like an image): the run records it as ``skipped`` with the reason and goes on."""
