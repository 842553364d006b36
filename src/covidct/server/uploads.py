"""Request body -> uploaded files as (name, bytes), in memory, within the size and count limits.

The body is read and parsed here rather than by Starlette's form parser, because that parser spools
any file over 1 MiB to a temporary file on disk, and a hospital upload must never touch the disk.
The body is counted while it streams in, so an oversized upload is refused at the limit, not after
it has filled the memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import PureWindowsPath

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from covidct.errors import InputError, UnsupportedUploadError, UploadTimeoutError, UploadTooLargeError

FORM_CONTENT_TYPE = "multipart/form-data"


def check_declared_size(content_length: str | None, *, max_bytes: int) -> None:
    """Refuse a body whose declared ``Content-Length`` is over ``max_bytes``, before reading any of it.

    Raises:
        UploadTooLargeError: the declared size is over the limit.
    """
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise UploadTooLargeError(
            f"upload is {int(content_length):,} bytes, over the "
            f"{max_bytes:,}-byte limit; send fewer or smaller files"
        )


async def read_files(
    content_type: str,
    body: AsyncIterator[bytes],
    *,
    max_bytes: int,
    max_files: int,
    timeout_s: float | None = None,
) -> list[tuple[str, bytes]]:
    """Parse a ``multipart/form-data`` body into its files as (file name, content), in order.

    Args:
        content_type: the request's Content-Type header (with its boundary).
        body: the body's chunks as they arrive.
        max_bytes: the most body bytes read; the stream is abandoned at the limit.
        max_files: the most file parts.
        timeout_s: the most seconds the whole body may take to arrive (None: no limit).

    Raises:
        UnsupportedUploadError: the body is not multipart/form-data.
        UploadTooLargeError: over ``max_bytes`` or ``max_files``.
        UploadTimeoutError: the body took longer than ``timeout_s``.
        InputError: a malformed body, a form field that is not a file, or no file at all.
    """
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != FORM_CONTENT_TYPE.encode() or not boundary:
        shown = content_type or "no Content-Type"
        raise UnsupportedUploadError(
            f"request body is {shown}; expected {FORM_CONTENT_TYPE} with the files as parts named 'files'"
        )
    parts = _Parts(max_files)
    try:
        async with asyncio.timeout(timeout_s):
            await _parse(body, MultipartParser(boundary, parts.callbacks()), max_bytes=max_bytes)
    except TimeoutError:
        raise UploadTimeoutError(
            f"the upload took over {timeout_s:g} s to arrive; send it again on a faster connection"
        ) from None
    except MultipartParseError as error:
        raise InputError(f"malformed multipart body ({error})") from None
    if not parts.is_complete:
        raise InputError(
            "malformed multipart body (it ends before its closing boundary; was the upload cut off?)"
        )
    if not parts.files:
        raise InputError(
            "no file in the upload; send one image, or the files of one study, as parts named 'files'"
        )
    return parts.files


async def _parse(body: AsyncIterator[bytes], parser: MultipartParser, *, max_bytes: int) -> None:
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > max_bytes:
            raise UploadTooLargeError(
                f"upload is over the {max_bytes:,}-byte limit; send fewer or smaller files"
            )
        parser.write(chunk)
    parser.finalize()


class _Parts:
    """python-multipart callbacks that collect each part's file name and bytes in memory."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.files: list[tuple[str, bytes]] = []
        self.is_complete = False
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append("_header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._end,
            "on_end": self._complete,
        }

    def _append(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _begin(self) -> None:
        self._disposition, self._data = b"", bytearray()

    def _header_end(self) -> None:
        if self._header_field.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field, self._header_value = b"", b""

    def _complete(self) -> None:
        self.is_complete = True

    def _end(self) -> None:
        _, options = parse_options_header(self._disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            raise InputError(
                f"form field '{field}' is not a file; send files as parts named 'files' with a file name"
            )
        if len(self.files) == self.max_files:
            raise UploadTooLargeError(
                f"more than {self.max_files:,} files in one upload; send at most {self.max_files:,}"
            )
        # Browsers send a bare name, but some clients send a full path; only the name
        # is kept (and echoed back).
        name = (
            PureWindowsPath(options[b"filename"].decode("utf-8", "replace")).name
            or f"upload-{len(self.files) + 1}"
        )
        self.files.append((name, bytes(self._data)))
