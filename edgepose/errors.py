"""One exception hierarchy for the whole toolkit.

Every error a user can cause is an ``EdgeposeError`` whose message is one sentence that says what is
wrong and, where it helps, what to do. The CLI prints ``error: <message>`` and exits with
``exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations


class EdgeposeError(Exception):
    """Base class: a problem the user can act on."""

    exit_code: int = 1


class UsageError(EdgeposeError):
    """An argument or option combination that cannot work (unknown model name, bad size, ...)."""

    exit_code = 2


class CheckpointError(EdgeposeError):
    """A weights file that is missing, corrupt, unsafe or for another architecture."""


class InputError(EdgeposeError):
    """An image, video or folder that cannot be read or has nothing in it."""


class DataError(EdgeposeError):
    """An annotation file or data set that is not what the command needs."""


class BundleError(EdgeposeError):
    """A bundle that is missing files, fails its hashes, or was made for another version or target."""


class ExportError(EdgeposeError):
    """Export could not produce a correct artifact."""


class ParityError(ExportError):
    """The exported model disagrees with the reference beyond the tolerance."""


class RuntimeUnavailable(EdgeposeError):
    """The runtime a bundle needs is not installed or cannot run on this machine."""
