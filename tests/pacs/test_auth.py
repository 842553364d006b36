"""DICOMweb credentials: a bearer token or basic auth, from a file or the environment."""

from __future__ import annotations

import pytest

from covidct.errors import OptionError
from covidct.pacs.auth import read_credentials


def test_a_token_file_gives_a_bearer_header(tmp_path):
    (tmp_path / "token").write_text("abc.def\n")

    session = read_credentials(token_file=tmp_path / "token", env={}).session()

    assert session.headers["Authorization"] == "Bearer abc.def" and session.auth is None


def test_a_basic_auth_file_gives_user_and_password(tmp_path):
    (tmp_path / "auth").write_text("alice:s3:cret\n")

    assert read_credentials(basic_auth_file=tmp_path / "auth", env={}).session().auth == ("alice", "s3:cret")


@pytest.mark.parametrize(
    ("env", "header", "auth"),
    [
        ({"COVIDCT_PACS_TOKEN": "tok"}, "Bearer tok", None),
        ({"COVIDCT_PACS_USER": "bob", "COVIDCT_PACS_PASSWORD": "pw"}, None, ("bob", "pw")),
        ({}, None, None),
    ],
    ids=["token-env", "basic-env", "none"],
)
def test_the_environment_is_read_when_no_file_is_given(env, header, auth):
    session = read_credentials(env=env).session()

    assert session.headers.get("Authorization") == header and session.auth == auth


def test_secrets_are_not_in_the_repr(tmp_path):
    assert "tok" not in repr(read_credentials(env={"COVIDCT_PACS_TOKEN": "tok"}))


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "the file is empty"), ("no-colon", "expected one line 'user:password'")],
    ids=["empty", "no-colon"],
)
def test_a_bad_basic_auth_file_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "auth").write_text(content)

    with pytest.raises(OptionError, match=message):
        read_credentials(basic_auth_file=tmp_path / "auth", env={})


def test_both_files_is_an_error(tmp_path):
    with pytest.raises(OptionError, match="both given; pass one"):
        read_credentials(token_file=tmp_path / "a", basic_auth_file=tmp_path / "b", env={})
