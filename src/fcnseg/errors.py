"""User-facing errors.

Anything a user can cause (a bad path, a corrupt image, a wrong option value) raises
:class:`FcnsegError` with a one-line message that names the file and the fix. The CLI
prints it as ``fcnseg: error: ...`` and exits with status 2, without a traceback.
Programming errors stay ordinary exceptions so that they do show a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class FcnsegError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class DataError(FcnsegError):
    """A data set, image or mask that cannot be used as it is."""


class CheckpointError(FcnsegError):
    """A checkpoint that is missing, corrupt or does not fit the model or data."""


class WeightsError(FcnsegError):
    """Backbone weights that are missing, corrupt or of the wrong architecture."""


class OptionError(FcnsegError, ValueError):
    """An option whose value is out of its range (a ValueError too, for library callers)."""


class UnknownNameError(FcnsegError, KeyError):
    """An unknown registry name (model, backbone, data set...). A KeyError, as in
    segmentation_models_pytorch, whose message lists the valid names."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]) -> None:
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        super().__init__(f"unknown {kind} {name!r}: choose one of {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError.__str__ would wrap the message in quotes
        return str(self.args[0])


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an error's text, cut at a word boundary within ``limit``."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
