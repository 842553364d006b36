"""What became of an input that gave no result: a failure, or a file left out for its type.

Its own module so that the readers (``dicom``, ``readers``) and the folder walk (``discover``) can all
report failures without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidct.errors import InputError


@dataclass(frozen=True)
class InputFailure:
    """An input that produced no result, and why (shown in the summary table; never silent)."""

    path: str
    reason: str

    @classmethod
    def from_error(cls, error: InputError, source: str) -> InputFailure:
        """The failure ``error`` describes, named by the error's own path or else by ``source`` (the
        input that raised it)."""
        return cls(error.path or source, error.reason)


@dataclass(frozen=True)
class SkippedFile(InputFailure):
    """A file inside a folder left out for its type: listed for the user, but not a failure."""
