"""``covidct pacs`` options: one-line errors for malformed values, before any model or server is touched."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from covidct.cli.app import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["watch", "MODEL", "--dicomweb", "http://127.0.0.1:9", "--filter", "BodyPart"],
            "--filter must be KEY=VALUE",
        ),
        (
            ["watch", "MODEL", "--dicomweb", "http://127.0.0.1:9", "--days", "-1"],
            "--days must be 0 or more; got -1",
        ),
        (["listen", "MODEL", "--destination", "ORTHANC@host"], "--destination must be AE_TITLE@HOST:PORT"),
        (
            ["watch", "MODEL", "--dicomweb", "http://x", "--token-file", "t", "--basic-auth-file", "b"],
            "both given",
        ),
    ],
    ids=["filter", "days", "destination", "two-credentials"],
)
def test_malformed_options_are_one_line_errors(args, message):
    result = CliRunner().invoke(app, ["pacs", *args], env={"COLUMNS": "250"})

    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_the_group_help_says_research_use_only():
    result = CliRunner().invoke(app, ["pacs", "--help"], env={"COLUMNS": "250"})

    assert result.exit_code == 0 and "Research use only" in result.output
