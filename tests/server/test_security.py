"""Who may call the API: loopback by default, an API key off it (constant-time check),
CORS closed unless asked."""

from __future__ import annotations

import hmac
import html
import re
from pathlib import Path

import pytest
from server_forms import upload

from covidct.errors import OptionError
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.server import auth
from covidct.server.app import create_app
from covidct.server.hosts import host_name
from covidct.server.settings import check_exposure, is_loopback

STATIC = Path(auth.__file__).parent / "static"
KEY = "s3cret-key"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("ct-server.hospital.local", False),
    ],
)
def test_loopback_hosts(host, expected):
    assert is_loopback(host) is expected


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_a_non_loopback_host_needs_an_api_key(make_settings, host):
    with pytest.raises(
        OptionError,
        match=(
            rf"^--host {re.escape(host)} lets other machines connect, so it "
            r"needs an API key: pass --api-key KEY or set COVIDCT_API_KEY"
        ),
    ):
        check_exposure(make_settings(host=host))
    with pytest.raises(OptionError, match="needs an API key"):
        create_app(make_settings(host=host, api_key=""))
    check_exposure(make_settings(host=host, api_key=KEY))


def test_the_api_key_comes_from_the_environment(make_settings, monkeypatch):
    monkeypatch.setenv("COVIDCT_API_KEY", KEY)

    assert make_settings(host="0.0.0.0").api_key.get_secret_value() == KEY


# (id, Authorization header or None, expected status)
AUTH_CASES = [
    ("no-header", None, 401),
    ("wrong-key", f"Bearer {KEY}x", 401),
    ("wrong-scheme", f"Basic {KEY}", 401),
    ("prefix-of-key", f"Bearer {KEY[:-1]}", 401),
    ("right-key", f"Bearer {KEY}", 200),
    ("scheme-is-case-insensitive", f"bearer {KEY}", 200),
]


@pytest.mark.parametrize(
    ("authorization", "status"), [case[1:] for case in AUTH_CASES], ids=[case[0] for case in AUTH_CASES]
)
@pytest.mark.parametrize("endpoint", ["model", "predict"])
def test_the_api_needs_the_right_key(make_client, ct_png, authorization, status, endpoint):
    client = make_client(api_key=KEY)
    headers = {} if authorization is None else {"Authorization": authorization}

    if endpoint == "model":
        response = client.get("/api/v1/model", headers=headers)
    else:
        response = client.post("/api/v1/predict", headers=headers, files=upload(("a.png", ct_png)))

    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "detail": (
                "missing or wrong API key; send the header 'Authorization: "
                "Bearer <key>' with the key the server was started with"
            )
        }


def test_the_key_is_compared_in_constant_time(make_client, monkeypatch):
    calls = []
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or a == b)

    make_client(api_key=KEY).get("/api/v1/model", headers={"Authorization": "Bearer guess"})

    assert calls == [(b"guess", KEY.encode())]


@pytest.mark.parametrize("path", ["/healthz", "/", "/static/app.js", "/docs", "/openapi.json"])
def test_health_page_and_docs_load_without_a_key(make_client, path):
    assert make_client(api_key=KEY).get(path).status_code == 200


def test_cors_is_closed_by_default(client):
    response = client.options(
        "/api/v1/model", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )

    assert "access-control-allow-origin" not in response.headers


def test_cors_opens_to_the_given_origin_only(make_client):
    client = make_client(cors_origins=["http://pacs.hospital.local"])
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Authorization"}

    allowed = client.options("/api/v1/predict", headers={"Origin": "http://pacs.hospital.local", **preflight})
    refused = client.options("/api/v1/predict", headers={"Origin": "http://evil.example", **preflight})

    assert allowed.headers["access-control-allow-origin"] == "http://pacs.hospital.local"
    assert "access-control-allow-origin" not in refused.headers


def test_the_page_shows_the_research_use_statement_and_asks_for_the_key(client):
    page = client.get("/").text

    assert html.escape(RESEARCH_USE_STATEMENT) in page
    assert 'id="api-key"' in page and 'type="password"' in page


@pytest.mark.parametrize("name", ["index.html", "app.js", "style.css"])
def test_the_page_loads_nothing_from_the_internet(name):
    text = (STATIC / name).read_text(encoding="utf-8")

    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text) == []


# (id, settings overrides, Host header, expected status)
HOST_CASES = [
    ("loopback-ip", {}, "127.0.0.1:8000", 200),
    ("localhost", {}, "localhost:8000", 200),
    ("ipv6-loopback", {}, "[::1]:8000", 200),
    ("rebinding-page", {}, "evil.example:8000", 421),
    ("allowed-name", {"allowed_hosts": ["ct-box.local"]}, "ct-box.local:8000", 200),
    ("with-a-key-no-check", {"api_key": KEY}, "evil.example:8000", 200),
]


@pytest.mark.parametrize(
    ("overrides", "host", "status"), [case[1:] for case in HOST_CASES], ids=[case[0] for case in HOST_CASES]
)
def test_on_loopback_without_a_key_only_loopback_host_names_are_served(make_client, overrides, host, status):
    client = make_client(**overrides)
    headers = {"Host": host, **({"Authorization": f"Bearer {KEY}"} if "api_key" in overrides else {})}

    response = client.get("/api/v1/model", headers=headers)

    assert response.status_code == status
    if status == 421:
        assert response.json()["detail"].startswith(f"Host header '{host}' is not this server's address")


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8000", "127.0.0.1"), ("[::1]:80", "::1"), ("localhost", "localhost"), ("::1", "::1")],
)
def test_host_names_are_read_without_their_port(header, name):
    assert host_name(header) == name
