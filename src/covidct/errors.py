"""Errors and warnings a user can trigger; the CLI prints these in one line, without a traceback."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path


class CovidctError(Exception):
    """Base class of every error caused by user input (a file, an option, a model directory).

    Args:
        reason: what was found and what was expected, ending with the fix when there is one.
        path: the file or directory concerned, if any; it prefixes the message.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the choice closest to ``value``, or "" when none is close.

    Case, and ``_`` against ``-``, do not count: ``Covid`` finds ``COVID``, ``onnx_int8`` finds ``onnx-int8``.
    """
    by_key = {_match_key(choice): choice for choice in choices}
    close = difflib.get_close_matches(_match_key(str(value)), list(by_key), n=1)
    return f" (did you mean '{by_key[close[0]]}'?)" if close else ""


def _match_key(text: str) -> str:
    return text.lower().replace("_", "-")


class InputError(CovidctError):
    """An input image or data file cannot be used."""


class UploadTooLargeError(InputError):
    """An upload is over a configured limit (bytes, file count, pixels); the server answers 413."""


class UploadTimeoutError(InputError):
    """An upload took longer to arrive than the server's body-read timeout; the server answers 408."""


class UnsupportedUploadError(InputError):
    """An uploaded file is not a type covidct reads (PNG, JPEG, BMP, TIFF, DICOM, NIfTI);
    the server answers 415."""


class BusyError(CovidctError):
    """The server cannot take the request now (every worker busy, or the decoding budget held by requests in
    flight); the client should retry later. The server answers 503."""


class OptionError(CovidctError):
    """A function argument (or the command-line option it comes from) is invalid.

    The library names the Python parameters (``batch_size must be at least 1``) and lists them in
    ``parameters``; the CLI prints the same message with their flags (``--batch-size``), see ``as_flags``.
    """

    def __init__(
        self, reason: str, *, path: str | Path | None = None, parameters: tuple[str, ...] = ()
    ) -> None:
        self.parameters = parameters
        super().__init__(reason, path=path)

    def as_flags(self) -> str:
        """The message with each named parameter written as its flag (``batch_size`` -> ``--batch-size``)."""
        reason = self.reason
        for name in self.parameters:
            reason = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "--" + name.replace("_", "-"), reason)
        return f"{self.path}: {reason}" if self.path else reason


class ModelDirError(CovidctError):
    """A model directory is missing files or does not match what was asked of it."""


class SplitLeakError(CovidctError):
    """A patient (or group) appears in more than one split."""


class WeightsError(CovidctError):
    """ImageNet weights could not be fetched, verified or converted."""


class TrainingInterrupted(CovidctError):
    """Training was interrupted (Ctrl-C); a resumable checkpoint was written."""


class CovidctWarning(UserWarning):
    """Base class of covidct's warnings about suspicious-but-usable input."""


class OptimisticMetricsWarning(CovidctWarning):
    """No patient ids: slices of one patient may sit in several splits, so metrics are optimistic."""


class MissingOodDetectorWarning(CovidctWarning):
    """A model directory has no out-of-distribution detector, so no input is ever
    flagged as not a CT slice."""


class LinkOutsideTreeWarning(CovidctWarning):
    """A symlink inside an input folder points outside it: its target was read, though it
    is not under the folder."""
