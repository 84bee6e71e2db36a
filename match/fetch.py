"""Fetch the image a client names by ``url``, without becoming a proxy into our network.

A reverse image search server fetches URLs chosen by anyone who can reach it, so the
fetch is the one place an attacker can make the server talk to *its own* network
(server-side request forgery): the cloud metadata service at 169.254.169.254, an admin
port on 127.0.0.1, Elasticsearch itself. The story of one fetch:

1. **Parse.** Only ``http`` and ``https`` URLs with a host are accepted (else 400).
   URLs with credentials (``user:pass@``) and invalid ports are refused too.
2. **Resolve the host ourselves** with :func:`socket.getaddrinfo` (a name that does
   not exist is a 400, a DNS outage a 502) and **check the address**: private,
   loopback, link-local, multicast, reserved, unspecified, shared (CGNAT),
   unique-local, site-local, Teredo and cloud metadata
   addresses are refused (400) unless they fall in ``MATCH_FETCH_ALLOW_NETWORKS``.
   IPv6 forms that embed an IPv4 address (mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``,
   NAT64 ``64:ff9b::/96``) are judged by the IPv4 address inside. Numeric host forms
   (``2130706433``, ``0x7f.1``, ``017700000001``) resolve to the address they spell
   and are checked like any other.
3. **Connect to the address we checked**, not to the name: a urllib3 connection pool
   whose host is the IP, with the ``Host`` header set to the name and, for https, SNI
   (``server_hostname``) and certificate checking (``assert_hostname``) against the
   name. A DNS answer that changes between the check and the connection (rebinding)
   therefore cannot move us.
4. **Follow redirects by hand** (at most :data:`MAX_REDIRECTS`), going back to step 1
   for every hop, so a public URL cannot redirect us to a private one.
5. **Stream the body** and stop as soon as it passes ``MATCH_MAX_UPLOAD_BYTES`` (413);
   a ``Content-Length`` already over the cap is refused before reading.

Time limits: ``MATCH_FETCH_TIMEOUT`` bounds the connect and every read, and the whole
fetch (redirects included) has a deadline of :data:`DEADLINE_FACTOR` times that
(a server dripping a byte a second can't hold a worker for long). Timeouts are 504.
An HTTP error status from the remote server is a 502 naming the status.

Everything urllib3 raises is translated here into :mod:`match.errors`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import parse_url

from match import __version__
from match.errors import BadRequest, FetchError, FetchTimeout, PayloadTooLarge

__all__ = ["Fetcher", "MAX_REDIRECTS", "DEADLINE_FACTOR", "Resolver", "parse_networks", "system_resolver"]

#: Redirects followed before giving up (each hop is checked like the first URL).
MAX_REDIRECTS = 5
#: The whole fetch may take this many times MATCH_FETCH_TIMEOUT.
DEADLINE_FACTOR = 2.0
#: Bytes read per chunk while streaming a body.
CHUNK_SIZE = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata services, refused even though some are not "private" by the RFCs.
METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
})


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``MATCH_FETCH_ALLOW_NETWORKS`` entries; ValueError names a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"MATCH_FETCH_ALLOW_NETWORKS: {cidr!r} is not a CIDR network "
                             "(e.g. 10.0.0.0/8 or fd00::/8)") from exc
    return tuple(networks)


#: IPv6 ranges refused whatever Python's ``is_global`` says: deprecated site-local
#: (fec0::/10), IPv4-compatible (::/96, deprecated), Teredo (2001::/32: tunnels to an
#: address we can't see) and NAT64's local-use prefix (64:ff9b:1::/48).
REFUSED_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "fec0::/10", "::/96", "2001::/32", "64:ff9b:1::/48"))

#: Prefixes that carry an IPv4 address in their low bits: the embedded address must be
#: public too, or http://[64:ff9b::7f00:1]/ would reach 127.0.0.1 through a NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address that is not a metadata service.

    IPv6 forms that embed an IPv4 address (``::ffff:127.0.0.1``, 6to4 ``2002:7f00:1::``,
    NAT64 ``64:ff9b::7f00:1``) are judged by the embedded address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in METADATA_ADDRESSES or any(address in net for net in REFUSED_NETWORKS):
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _is_public(embedded)
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and address not in METADATA_ADDRESSES)


#: getaddrinfo errors meaning "no such name" (a 400), as opposed to a DNS outage (502).
_NO_SUCH_HOST = frozenset(code for code in (getattr(socket, "EAI_NONAME", None),
                                            getattr(socket, "EAI_NODATA", None)) if code is not None)

#: ``resolver(host, port)`` -> the host's addresses as text (what getaddrinfo gives).
Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host`` (getaddrinfo: DNS, /etc/hosts, and numeric
    forms such as ``2130706433`` or ``0x7f.1``, which come back as dotted quads)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in infos]


@dataclass(frozen=True)
class _Target:
    """One hop: where to connect (a checked IP) and what to say to it."""

    scheme: str
    host: str  # the name from the URL (for Host, SNI and the certificate)
    address: str  # the IP we checked and connect to
    port: int
    path: str  # path and query, what goes on the request line

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


class Fetcher:
    """Fetches image bytes from client-supplied URLs with the guards above.

    >>> fetcher = Fetcher(timeout=10.0, max_bytes=20 << 20, allow_networks=["127.0.0.0/8"])
    >>> data = fetcher.fetch("http://127.0.0.1:8080/photo.jpg")  # doctest: +SKIP
    """

    def __init__(self, *, timeout: float, max_bytes: int, allow_networks: Sequence[str] = (),
                 ca_certs: str | None = None, resolver: Resolver | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.allow_networks = parse_networks(allow_networks)
        self.ca_certs = ca_certs
        # The name -> addresses step, replaceable so tests can play a hostile DNS
        # (rebinding, names for private addresses) without a network.
        self.resolver: Resolver = resolver or system_resolver

    def fetch(self, url: str, *, field: str = "url") -> bytes:
        """Return the body at ``url``; ``field`` names the request field in errors.

        Raises BadRequest (bad or refused url, 400), PayloadTooLarge (413),
        FetchError (502) or FetchTimeout (504).
        """
        deadline = time.monotonic() + self.timeout * DEADLINE_FACTOR
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            target = self._target(current, field, deadline)
            location = self._get(target, current, field, deadline)
            if isinstance(location, bytes):
                return location
            current = urljoin(current, location)
        raise FetchError(f"{field}: more than {MAX_REDIRECTS} redirects fetching {url}")

    # --- steps -----------------------------------------------------------------

    def _target(self, url: str, field: str, deadline: float | None = None) -> _Target:
        """Parse ``url`` and pick a checked address to connect to (steps 1 and 2)."""
        try:
            parsed = parse_url(url.strip())
        except LocationParseError as exc:
            raise BadRequest(f"{field}: {url!r} is not a valid URL") from exc
        scheme = (parsed.scheme or "").lower()
        if scheme not in ("http", "https"):
            raise BadRequest(f"{field}: only http and https URLs can be fetched, got {url!r}")
        if not parsed.host:
            raise BadRequest(f"{field}: URL {url!r} has no host")
        if parsed.auth is not None:
            # user:password@ in a fetched URL is either a leak or a parser trick
            # (http://public.example@127.0.0.1/): refused either way.
            raise BadRequest(f"{field}: URLs with credentials (user@host) are not fetched")
        host = parsed.host.strip("[]").rstrip(".").lower()
        port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
        if not 0 < port < 65536:
            raise BadRequest(f"{field}: port {port} is not a valid TCP port")
        address = self._resolve(host, port, field, deadline)
        return _Target(scheme, host, address, port, parsed.request_uri)

    def _resolve(self, host: str, port: int, field: str, deadline: float | None = None) -> str:
        try:
            answers = self._answers(host, port, field, deadline)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_HOST:
                # The client named a host that does not exist: its mistake, not an outage.
                raise BadRequest(f"{field}: host {host!r} does not exist (no DNS record)") from exc
            raise FetchError(f"{field}: cannot resolve host {host!r}") from exc
        except UnicodeError as exc:
            # The IDNA codec refuses the name itself (a label over 63 characters, a bad
            # international name): the client's URL is malformed, no server failed.
            raise BadRequest(f"{field}: host {host!r} is not a valid host name ({exc})") from exc
        except (OSError, ValueError) as exc:
            raise FetchError(f"{field}: cannot resolve host {host!r}") from exc
        refused = []
        for answer in answers:
            text = str(answer).split("%", 1)[0]  # drop an IPv6 zone index
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                refused.append(text)
                continue
            if _is_public(address) or any(address in net for net in self.allow_networks
                                          if net.version == address.version):
                return text
            refused.append(text)
        if not refused:
            raise FetchError(f"{field}: host {host!r} has no address")
        raise BadRequest(f"{field}: host {host!r} resolves to a non-public address "
                         f"({', '.join(sorted(set(refused)))}), which match does not fetch; "
                         "an operator may allow it with MATCH_FETCH_ALLOW_NETWORKS")

    def _answers(self, host: str, port: int, field: str, deadline: float | None) -> Sequence[str]:
        """The resolver's answer, within the fetch's deadline: getaddrinfo itself has no
        timeout, and a name server that never answers must not hold a worker longer."""
        remaining = self.timeout if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeout(f"{field}: resolving {host!r} took too long")
        outcome: list[Sequence[str] | BaseException] = []

        def resolve() -> None:
            try:
                outcome.append(self.resolver(host, port))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                outcome.append(exc)

        thread = threading.Thread(target=resolve, name=f"resolve {host}", daemon=True)
        thread.start()
        thread.join(min(remaining, self.timeout))
        if not outcome:
            raise FetchTimeout(f"{field}: resolving {host!r} timed out")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _pool(self, target: _Target, read_timeout: float) -> urllib3.HTTPConnectionPool:
        timeout = urllib3.Timeout(connect=min(self.timeout, read_timeout), read=read_timeout)
        if target.scheme == "https":
            return urllib3.HTTPSConnectionPool(
                target.address, target.port, timeout=timeout, retries=False, maxsize=1,
                cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs,
                server_hostname=target.host, assert_hostname=target.host)
        return urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout,
                                          retries=False, maxsize=1)

    def _get(self, target: _Target, url: str, field: str, deadline: float) -> bytes | str:
        """GET one hop: the body (bytes) or a redirect location (str)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeout(f"{field}: fetching {url} took too long")
        headers = {"Host": target.host_header, "User-Agent": f"match/{__version__}",
                   "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
        with self._pool(target, min(self.timeout, remaining)) as pool:
            try:
                response = pool.urlopen("GET", target.path, headers=headers, redirect=False,
                                        retries=False, preload_content=False, assert_same_host=False)
            except NewConnectionError as exc:  # a subclass of ConnectTimeoutError, so first
                raise FetchError(f"{field}: cannot fetch {url}: {_reason(exc)}") from exc
            except (ConnectTimeoutError, ReadTimeoutError) as exc:
                raise FetchTimeout(f"{field}: timed out fetching {url}") from exc
            except HTTPError as exc:
                raise FetchError(f"{field}: cannot fetch {url}: {_reason(exc)}") from exc
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"{field}: {url} answered HTTP {response.status} "
                                         "without a Location")
                    return location
                if response.status >= 400:
                    raise FetchError(f"{field}: {url} answered HTTP {response.status} "
                                     f"{response.reason or ''}".rstrip())
                return self._read(response, url, field, deadline)
            finally:
                response.release_conn()
                response.close()

    def _read(self, response: urllib3.BaseHTTPResponse, url: str, field: str, deadline: float) -> bytes:
        """Stream the body, enforcing the size cap and the deadline (step 5)."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"{field}: {url} is {int(declared)} bytes; the limit is "
                                  f"{self.max_bytes} bytes (MATCH_MAX_UPLOAD_BYTES)")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                # read1 returns what has arrived (not a full chunk), so a server dripping
                # bytes still meets the deadline check below.
                # decode_content=False: we asked for identity, and a server that gzips anyway
                # must not make us inflate a compression bomb (the bytes then fail to decode).
                chunk = response.read1(CHUNK_SIZE, decode_content=False)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise PayloadTooLarge(f"{field}: {url} is larger than {self.max_bytes} bytes "
                                          "(MATCH_MAX_UPLOAD_BYTES)")
                if time.monotonic() > deadline:
                    raise FetchTimeout(f"{field}: fetching {url} took too long")
                chunks.append(chunk)
        except ReadTimeoutError as exc:
            raise FetchTimeout(f"{field}: timed out reading {url}") from exc
        except HTTPError as exc:
            raise FetchError(f"{field}: cannot read {url}: {_reason(exc)}") from exc
        return b"".join(chunks)


def _reason(exc: HTTPError) -> str:
    """A short, client-safe reason for a urllib3 failure."""
    if isinstance(exc, NewConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, SSLError):
        return "TLS handshake or certificate check failed"
    return type(exc).__name__
