"""SSRF tricks against the URL fetcher, one by one, without any network.

Literal addresses in every spelling the resolver accepts, IPv6 forms that embed an
IPv4 address, credentials, ports, redirects and a hostile DNS (a custom resolver:
names that resolve to private addresses, answers that change between calls). The
default configuration refuses them all; loopback is only ever reached where a test
allows it explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from match.app import close_store, create_app
from match.errors import BadRequest, FetchError
from match.fetch import Fetcher, _is_public
from tests.api.conftest import FETCH_TIMEOUT, UPLOAD_LIMIT, Remote

#: Hosts that must be refused by default: (host as written in a URL, what it is).
REFUSED_HOSTS = [
    ("127.0.0.1", "loopback"),
    ("127.1", "loopback, short form"),
    ("2130706433", "loopback as one decimal number"),
    ("017700000001", "loopback in octal"),
    ("0x7f.1", "loopback in hex"),
    ("0x7f000001", "loopback as one hex number"),
    ("localhost", "loopback by name"),
    ("0", "0.0.0.0 short form"),
    ("0.0.0.0", "unspecified"),
    ("[::]", "IPv6 unspecified"),
    ("[::1]", "IPv6 loopback"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback"),
    ("[::ffff:7f00:1]", "IPv4-mapped loopback, hex"),
    ("[::ffff:169.254.169.254]", "IPv4-mapped metadata"),
    ("[::127.0.0.1]", "IPv4-compatible loopback"),
    ("[64:ff9b::7f00:1]", "NAT64 of loopback"),
    ("[64:ff9b::a9fe:a9fe]", "NAT64 of the metadata address"),
    ("[64:ff9b:1::a00:1]", "NAT64 local-use prefix"),
    ("[2002:7f00:1::]", "6to4 of loopback"),
    ("[2002:a9fe:a9fe::1]", "6to4 of the metadata address"),
    ("[2002:c0a8:101::1]", "6to4 of 192.168.1.1"),
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "Teredo"),
    ("[fc00::1]", "unique local"),
    ("[fd12:3456::1]", "unique local"),
    ("[fec0::1]", "site-local (deprecated)"),
    ("[fe80::1]", "link-local"),
    ("[fe80::1%25eth0]", "link-local with a zone"),
    ("[ff02::1]", "multicast"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "ECS task metadata"),
    ("[fd00:ec2::254]", "AWS metadata over IPv6"),
    ("100.100.100.200", "Alibaba metadata"),
    ("169.254.0.1", "link-local"),
    ("192.0.0.1", "IETF protocol assignments"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
]


def fetcher(allow: Sequence[str] = (), resolver: object = None) -> Fetcher:
    return Fetcher(timeout=FETCH_TIMEOUT, max_bytes=UPLOAD_LIMIT, allow_networks=allow,
                   resolver=resolver)  # type: ignore[arg-type]


@pytest.mark.parametrize(("host", "what"), REFUSED_HOSTS, ids=[h for h, _ in REFUSED_HOSTS])
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("port", ["", ":8080"])
def test_default_refuses(host: str, what: str, scheme: str, port: str) -> None:
    with pytest.raises(BadRequest, match="non-public"):
        fetcher().fetch(f"{scheme}://{host}{port}/latest/meta-data/")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::1", "64:ff9b::808:808"])
def test_public_addresses_stay_public(address: str) -> None:
    assert _is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://user:secret@127.0.0.1/a.jpg",
    "http://example.com@127.0.0.1/a.jpg",
    "http://user@8.8.8.8/a.jpg",  # refused for the credentials even when public
])
def test_credentials_in_urls_are_refused(url: str) -> None:
    with pytest.raises(BadRequest, match="credentials|non-public"):
        fetcher().fetch(url)


@pytest.mark.parametrize("url", ["http://8.8.8.8:0/a.jpg", "http://8.8.8.8:65536/a.jpg",
                                 "http://8.8.8.8:99999999/a.jpg", "http://8.8.8.8:-1/"])
def test_bad_ports_are_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        fetcher().fetch(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "dict://127.0.0.1:11211/",
                                 "ftp://8.8.8.8/", "jar:http://8.8.8.8!/", "HTTP://", "//127.0.0.1/",
                                 "http:///etc/passwd", "data:image/png;base64,AAAA"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(BadRequest):
        fetcher().fetch(url)


class HostileDNS:
    """A resolver that answers from a table, and may change its answer (rebinding)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        sequence = self.answers.get(host)
        if sequence is None:
            # Numeric forms only (inet_aton reads 2130706433 and 0x7f.1): never a DNS query.
            try:
                return [str(ipaddress.ip_address(host))]
            except ValueError:
                return [socket.inet_ntoa(socket.inet_aton(host))]
        # Each call takes the next answer; the last one repeats.
        return sequence.pop(0) if len(sequence) > 1 else sequence[0]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1",
                                     "::ffff:10.0.0.1", "fd00:ec2::254", "64:ff9b::a00:1"])
def test_names_resolving_to_private_addresses_are_refused(address: str) -> None:
    dns = HostileDNS({"images.example.com": [[address]]})
    with pytest.raises(BadRequest, match="non-public"):
        fetcher(resolver=dns).fetch("http://images.example.com/a.jpg")


def test_unparsable_resolver_answers_are_refused() -> None:
    dns = HostileDNS({"odd.example.com": [["not-an-ip"]], "none.example.com": [[]]})
    with pytest.raises(BadRequest, match="non-public"):
        fetcher(resolver=dns).fetch("http://odd.example.com/a.jpg")
    with pytest.raises(FetchError):
        fetcher(resolver=dns).fetch("http://none.example.com/a.jpg")


def test_dns_rebinding_cannot_move_the_connection(remote: Remote) -> None:
    """Resolved once, checked, connected to: a later answer (10.0.0.1) is never used."""
    remote.put("rebind.jpg", b"from the checked address")
    dns = HostileDNS({"rebind.example.com": [["127.0.0.1"], ["10.0.0.1"]]})
    guarded = fetcher(allow=["127.0.0.1/32"], resolver=dns)
    body = guarded.fetch(f"http://rebind.example.com:{remote.port}/file/rebind.jpg")
    assert body == b"from the checked address"
    assert dns.calls == ["rebind.example.com"]
    # The name (not the IP) went to the server, as a normal client would send it.
    dns2 = HostileDNS({"rebind.example.com": [["127.0.0.1"]]})
    host = fetcher(allow=["127.0.0.1/32"], resolver=dns2).fetch(f"http://rebind.example.com:{remote.port}/host")
    assert host == f"rebind.example.com:{remote.port}".encode()


def test_a_refused_answer_among_others_is_never_connected(remote: Remote) -> None:
    """With several answers, only an allowed one is connected to."""
    remote.put("mixed.jpg", b"ok")
    dns = HostileDNS({"mixed.example.com": [["10.0.0.1", "169.254.169.254", "127.0.0.1"]]})
    body = fetcher(allow=["127.0.0.1/32"], resolver=dns).fetch(
        f"http://mixed.example.com:{remote.port}/file/mixed.jpg")
    assert body == b"ok"


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/",
    "http://[::ffff:10.0.0.1]/", "http://[fd00:ec2::254]/", "http://internal.example.com/",
    "file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@8.8.8.8/",
])
def test_every_redirect_hop_is_checked(remote: Remote, target: str) -> None:
    """An allowed first hop (127.0.0.1 only) redirecting anywhere refused is refused."""
    dns = HostileDNS({"internal.example.com": [["10.1.2.3"]]})
    guarded = fetcher(allow=["127.0.0.1/32"], resolver=dns)
    with pytest.raises(BadRequest):
        guarded.fetch(remote.url(f"redirect/1?to={target}"))


def test_the_default_app_refuses_loopback_and_the_allowlist_opens_it(tmp_path: Path, remote: Remote) -> None:
    url = remote.put("allow.jpg", b"not an image")
    for allow, status in (([], 400), (["127.0.0.0/8"], 415)):
        app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path / str(status)),
                          "MATCH_FETCH_ALLOW_NETWORKS": allow, "MATCH_LOG_LEVEL": "error"})
        try:
            response = app.test_client().post("/search", data={"url": url})
            # 400: refused before connecting; 415: fetched (allowed), then not an image.
            assert response.status_code == status, response.json
        finally:
            close_store(app)


def test_a_resolver_that_never_answers_times_out() -> None:
    """getaddrinfo has no timeout of its own: the fetch deadline bounds it (504)."""
    import time

    from match.errors import FetchTimeout

    def stuck(host: str, port: int) -> list[str]:
        time.sleep(10)
        return ["8.8.8.8"]

    started = time.monotonic()
    with pytest.raises(FetchTimeout, match="resolving"):
        Fetcher(timeout=0.5, max_bytes=UPLOAD_LIMIT, resolver=stuck).fetch("http://slow-dns.example.com/a.jpg")
    assert time.monotonic() - started < 2.0


def test_a_gzip_bomb_is_never_inflated() -> None:
    """We ask for identity; a server that sends gzip anyway gets its bytes taken as they are."""
    import gzip
    import http.server
    import threading

    bomb = gzip.compress(b"\x00" * 50_000_000)  # 50 MB inflated, ~50 KB on the wire

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = fetcher(allow=["127.0.0.1/32"]).fetch(f"http://127.0.0.1:{server.server_address[1]}/bomb")
    finally:
        server.shutdown()
        server.server_close()
    assert body == bomb  # still compressed: nothing was inflated
