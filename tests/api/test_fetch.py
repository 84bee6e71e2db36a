"""The URL fetcher's guards (match.fetch): SSRF refusals, pinning, redirects, limits.

Loopback is refused by default; these tests allow it explicitly where they need a
server, and prove the default refusal separately (also through the API).
"""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from match.app import close_store, create_app
from match.errors import BadRequest, FetchError, FetchTimeout, PayloadTooLarge
from match.fetch import Fetcher, _is_public, parse_networks
from tests.api.conftest import FETCH_TIMEOUT, UPLOAD_LIMIT, Remote

LOOPBACK = ["127.0.0.0/8"]


def fetcher(allow: list[str] | None = None, **kwargs: Any) -> Fetcher:
    return Fetcher(timeout=FETCH_TIMEOUT, max_bytes=UPLOAD_LIMIT,
                   allow_networks=LOOPBACK if allow is None else allow, **kwargs)


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("192.168.1.1", False), ("169.254.169.254", False), ("169.254.1.1", False), ("fd00:ec2::254", False),
    ("fe80::1", False), ("224.0.0.1", False), ("239.1.2.3", False), ("ff02::1", False), ("0.0.0.0", False),
    ("100.64.0.1", False), ("240.0.0.1", False), ("::ffff:127.0.0.1", False), ("100.100.100.200", False),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert _is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/file/a.jpg", "http://localhost:{port}/file/a.jpg", "http://[::1]:{port}/a",
    "http://2130706433:{port}/file/a.jpg",  # 127.0.0.1 written as one number
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/", "http://0.0.0.0:{port}/",
])
def test_default_refuses_non_public_addresses(remote: Remote, url: str) -> None:
    remote.put("a.jpg", b"data")
    with pytest.raises(BadRequest, match="non-public"):
        fetcher(allow=[]).fetch(url.format(port=remote.port))


def test_default_settings_refuse_loopback_through_the_api(tmp_path: Path, remote: Remote) -> None:
    url = remote.put("ssrf.jpg", b"data")
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path), "TESTING": True})
    try:
        response = app.test_client().post("/add", data={"url": url, "filepath": "x"})
        assert response.status_code == 400
        assert "non-public" in response.json["error"][0]
        assert app.test_client().get("/count").json["result"] == [0]
    finally:
        close_store(app)


def test_allowed_network_is_fetched_and_pinned_with_the_host_header(remote: Remote) -> None:
    assert fetcher().fetch(remote.put("ok.jpg", b"image bytes")) == b"image bytes"
    # Connected to the checked IP, but the server saw the name the client gave.
    assert fetcher().fetch(f"http://localhost:{remote.port}/host") == f"localhost:{remote.port}".encode()


def test_allow_list_is_exact(remote: Remote) -> None:
    only_one = fetcher(allow=["127.0.0.1/32"])
    assert only_one.fetch(remote.put("one.jpg", b"1")) == b"1"
    with pytest.raises(BadRequest, match="non-public"):
        only_one.fetch(f"http://127.0.0.2:{remote.port}/file/one.jpg")


def test_bad_allow_list_is_refused() -> None:
    with pytest.raises(ValueError, match="MATCH_FETCH_ALLOW_NETWORKS"):
        parse_networks(["10.0.0.0/33"])


def test_redirects_are_followed_and_rechecked(remote: Remote) -> None:
    target = remote.put("target.jpg", b"target")
    assert fetcher().fetch(remote.url(f"redirect/3?to={target}")) == b"target"
    with pytest.raises(FetchError, match="redirects"):
        fetcher().fetch(remote.url(f"redirect/6?to={target}"))
    # Each hop is checked: an allowed host may not redirect us somewhere refused.
    only_one = fetcher(allow=["127.0.0.1/32"])
    with pytest.raises(BadRequest, match="non-public"):
        only_one.fetch(remote.url("redirect/1?to=http://169.254.169.254/latest/meta-data/"))


@pytest.mark.parametrize(("path", "error", "message"), [
    ("status/404", FetchError, "HTTP 404"),
    ("status/500", FetchError, "HTTP 500"),
    ("slow", FetchTimeout, "timed out"),
    ("drip", FetchTimeout, "too long"),
    ("endless", PayloadTooLarge, "larger than"),
    ("declared-huge", PayloadTooLarge, "limit"),
])
def test_failures_map_to_statuses(remote: Remote, path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        fetcher().fetch(remote.url(path))


def test_a_host_that_does_not_exist_is_400() -> None:
    # The client's mistake (NXDOMAIN), not an outage: a 4xx, so fuzzed URLs never give a 5xx.
    with pytest.raises(BadRequest, match="does not exist"):
        fetcher().fetch("http://no-such-host.invalid/a.jpg")


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/", "http://",
                                 "not a url", "javascript:alert(1)"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(BadRequest):
        fetcher().fetch(url)


# --- https: the certificate is checked against the name, while we connect to the IP ---


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An https server on 127.0.0.1 with a self-signed certificate for ``localhost``."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            body = b"secure bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1]), str(cert)
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_against_the_name(tls_server: tuple[int, str]) -> None:
    port, cert = tls_server
    trusting = fetcher(ca_certs=cert)
    # By name: connected to 127.0.0.1, SNI and the certificate check use "localhost".
    assert trusting.fetch(f"https://localhost:{port}/a.jpg") == b"secure bytes"
    # By IP: the certificate does not name 127.0.0.1, so the check fails.
    with pytest.raises(FetchError, match="TLS"):
        trusting.fetch(f"https://127.0.0.1:{port}/a.jpg")
    # Without the CA: self-signed is refused.
    with pytest.raises(FetchError, match="TLS"):
        fetcher().fetch(f"https://localhost:{port}/a.jpg")


def test_a_host_name_the_idna_codec_refuses_is_a_client_error() -> None:
    with pytest.raises(BadRequest, match="not a valid host name"):
        fetcher(allow=[]).fetch(f"http://{'a' * 64}.example.com/a.jpg")
