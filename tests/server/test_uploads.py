"""Request bodies -> (file name, bytes) in memory: the multipart parser, its limits and its error messages."""

from __future__ import annotations

import asyncio

import pytest

from covidct.errors import InputError, UnsupportedUploadError, UploadTimeoutError, UploadTooLargeError
from covidct.server.uploads import check_declared_size, read_files

FORM = "multipart/form-data; boundary=b"


def part(name: str | None, content: bytes, *, field: str = "files") -> bytes:
    filename = "" if name is None else f'; filename="{name}"'
    return (
        (
            "--b\r\nContent-Disposition: form-data; "
            f'name="{field}"{filename}\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + b"\r\n"
    )


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--b--\r\n"


def read(
    data: bytes, *, content_type: str = FORM, chunk: int = 7, max_bytes: int = 10_000, max_files: int = 4
) -> list[tuple[str, bytes]]:
    async def chunks():
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    return asyncio.run(read_files(content_type, chunks(), max_bytes=max_bytes, max_files=max_files))


def test_files_come_back_in_order_with_their_bytes_whatever_the_chunking():
    data = body(part("a.png", b"\x89PNG first"), part("b.dcm", b"\r\n--not-a-boundary\r\n" * 3))

    for chunk in (1, 7, len(data)):
        assert read(data, chunk=chunk) == [
            ("a.png", b"\x89PNG first"),
            ("b.dcm", b"\r\n--not-a-boundary\r\n" * 3),
        ]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("C:\\scans\\Doe\\slice.png", "slice.png"), ("scans/doe/slice.png", "slice.png"), ("", "upload-1")],
)
def test_only_the_file_name_is_kept(sent, kept):
    assert read(body(part(sent, b"x")))[0][0] == kept


# (id, body, read options, error class, expected message)
BAD_BODIES = [
    (
        "not-multipart",
        b"{}",
        {"content_type": "application/json"},
        UnsupportedUploadError,
        r"^request body is application/json; expected "
        r"multipart/form-data with the files as parts named 'files'$",
    ),
    (
        "no-content-type",
        b"x",
        {"content_type": ""},
        UnsupportedUploadError,
        r"^request body is no Content-Type; expected multipart/form-data",
    ),
    (
        "no-boundary",
        b"x",
        {"content_type": "multipart/form-data"},
        UnsupportedUploadError,
        r"^request body is multipart/form-data; expected multipart/form-data with",
    ),
    (
        "bad-header",
        b"--b\r\nbad header\r\n\r\nx\r\n--b--\r\n",
        {},
        InputError,
        r"^malformed multipart body \(Found invalid character",
    ),
    (
        "wrong-boundary",
        b"--x\r\n",
        {},
        InputError,
        r"^malformed multipart body \(Expected boundary character",
    ),
    (
        "cut-off",
        part("a.png", b"abc")[:-2],
        {},
        InputError,
        r"^malformed multipart body \(it ends before its closing boundary; was the upload cut off\?\)$",
    ),
    (
        "field-not-file",
        body(part(None, b"hello", field="note")),
        {},
        InputError,
        r"^form field 'note' is not a file; send files as parts named 'files' with a file name$",
    ),
    (
        "empty-form",
        b"--b--\r\n",
        {},
        InputError,
        r"^no file in the upload; send one image, or the files of one study, as parts named 'files'$",
    ),
    (
        "too-many-files",
        body(*[part(f"{i}.png", b"x") for i in range(3)]),
        {"max_files": 2},
        UploadTooLargeError,
        r"^more than 2 files in one upload; send at most 2$",
    ),
    (
        "too-large",
        body(part("a.png", b"x" * 500)),
        {"max_bytes": 400},
        UploadTooLargeError,
        r"^upload is over the 400-byte limit; send fewer or smaller files$",
    ),
]


@pytest.mark.parametrize(
    ("data", "options", "error", "message"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_bodies_are_refused_with_the_reason(data, options, error, message):
    with pytest.raises(error, match=message):
        read(data, **options)


@pytest.mark.parametrize(
    ("content_length", "is_refused"),
    [(None, False), ("1000", False), ("1001", True), ("not-a-number", False)],
)
def test_a_declared_length_over_the_limit_is_refused_before_reading(content_length, is_refused):
    if is_refused:
        with pytest.raises(
            UploadTooLargeError,
            match=r"^upload is 1,001 bytes, over the 1,000-byte limit; send fewer or smaller files$",
        ):
            check_declared_size(content_length, max_bytes=1000)
    else:
        check_declared_size(content_length, max_bytes=1000)


def test_a_body_slower_than_the_timeout_is_refused():
    """A client that stops sending keeps its connection (and its bytes so far) only until
    the body-read timeout."""

    async def stalled():
        yield body(part("a.png", b"\x89PNG first"))[:20]
        await asyncio.Event().wait()  # never set: the client has gone quiet

    with pytest.raises(
        UploadTimeoutError,
        match=r"^the upload took over 0.05 s to arrive; send it again on a faster connection$",
    ):
        asyncio.run(read_files(FORM, stalled(), max_bytes=10_000, max_files=4, timeout_s=0.05))
