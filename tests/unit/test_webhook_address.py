"""core/webhook_address.py: which webhook destinations are public, how URL hosts are read
(the resolver's legacy IPv4 forms too), the operator's allowlist, the settings-time 400, and
the worker's resolve-then-check backend."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
import trustme

from critique_sidecar.config import Config
from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.webhook_address import (
    AddressRefused,
    host_refusal,
    literal_address,
    parse_networks,
    split_host_port,
)
from critique_sidecar.workers.notify import CheckedBackend, CheckedTransport

REFUSED = {
    # IPv4
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata
    "0.0.0.0": "unspecified",
    "100.64.0.1": "not globally routable",  # carrier-grade NAT
    "224.0.0.1": "multicast",
    "255.255.255.255": "private",
    "192.0.2.1": "private",  # documentation
    # the resolver's legacy IPv4 forms (inet_aton): all 127.0.0.1 or 10.0.0.1
    "2130706433": "loopback",
    "0x7f000001": "loopback",
    "0177.0.0.1": "loopback",
    "0x7f.1": "loopback",
    "127.1": "loopback",
    "012.0.0.1": "private",
    # IPv6
    "[::1]": "loopback",
    "[::]": "unspecified",
    "[fe80::1]": "link-local",
    "[fd12:3456::1]": "unique-local",
    "[fc00::1]": "unique-local",
    "[fec0::1]": "site-local",
    "[ff02::1]": "multicast",
    "[2001:db8::1]": "private",  # documentation
    # IPv6 forms that reach an IPv4 address: judged by it
    "[::ffff:127.0.0.1]": "loopback",
    "[::ffff:a9fe:a9fe]": "link-local",
    "[::ffff:10.0.0.1]": "private",
    "[2002:7f00:1::]": "loopback",  # 6to4 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]": "link-local",  # NAT64 of 169.254.169.254
    # names
    "localhost": "loopback",
    "api.localhost": "loopback",
    "LOCALHOST.": "loopback",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "[2606:4700::1111]", "[::ffff:8.8.8.8]", "134744072", "hooks.example.com"]


@pytest.mark.parametrize("host, kind", REFUSED.items())
def test_non_public_hosts_are_refused_with_the_reason(host: str, kind: str) -> None:
    reason = host_refusal(host)
    assert reason is not None and reason.endswith(f"is not a public address ({kind})")


@pytest.mark.parametrize("host", PUBLIC)
def test_public_hosts_and_names_pass(host: str) -> None:
    assert host_refusal(host) is None


def test_literal_addresses_are_read_as_the_resolver_reads_them() -> None:
    assert str(literal_address("2130706433")) == "127.0.0.1"
    assert str(literal_address("0x7f.0.0.1")) == "127.0.0.1"
    assert str(literal_address("010.1")) == "8.0.0.1"  # octal, then the 24-bit last part
    assert str(literal_address("[::ffff:127.0.0.1]")) == "::ffff:7f00:1"
    assert literal_address("1.2.3.4.5") is None and literal_address("0x") is None  # names (unresolvable)
    assert literal_address("hooks.example.com") is None
    assert literal_address("256.1.1.1") is None  # neither an address nor a name a resolver would accept


def test_the_allowlist_lets_listed_networks_through_only() -> None:
    allowed = parse_networks("127.0.0.0/8, 10.20.0.0/16, fd00::/8")
    assert host_refusal("127.0.0.1", allowed) is None and host_refusal("localhost", allowed) is None
    assert host_refusal("[::ffff:127.0.0.1]", allowed) is None  # the IPv4 address it reaches is listed
    assert host_refusal("10.20.3.4", allowed) is None and host_refusal("[fd00::5]", allowed) is None
    assert host_refusal("10.21.0.1", allowed) is not None
    assert host_refusal("169.254.169.254", allowed) is not None
    assert host_refusal("[::1]", allowed) is not None  # IPv6 loopback is not 127.0.0.0/8
    assert parse_networks("") == () and parse_networks("::1")[0].prefixlen == 128
    with pytest.raises(ValueError, match="nope"):
        Config(notify_allowed_networks="10.0.0.0/8,nope")
    assert Config(notify_allowed_networks="127.0.0.1").notify_networks == parse_networks("127.0.0.1/32")


def test_split_host_port() -> None:
    assert split_host_port("https://h.example:8443/x?y=1") == "h.example"
    assert split_host_port("http://[::1]:8080/x") == "[::1]"
    assert split_host_port("http://[::1]/x") == "[::1]" and split_host_port("https://2130706433") == "2130706433"


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "https://10.0.0.1/h", "https://[::1]:8443/h",
     "https://[::ffff:127.0.0.1]/h", "http://2130706433/h", "https://localhost/h"],
)  # fmt: skip
def test_settings_refuse_a_private_webhook_with_a_400_naming_the_field(url: str) -> None:
    with pytest.raises(ApiError) as info:
        SettingsPatch.parse({"notify_webhook_url": url})
    err = info.value
    assert (err.status, err.code, err.param) == (400, "invalid_request", "notify_webhook_url")
    assert "must point at a public address" in err.message and "CRITIQUE_NOTIFY_ALLOWED_NETWORKS" in err.message
    allowed = parse_networks("127.0.0.0/8,10.0.0.0/8,169.254.0.0/16,::1")
    assert SettingsPatch.parse({"notify_webhook_url": url}, allowed).notify_webhook_url == url


def test_settings_accept_names_and_public_addresses() -> None:
    for url in ("https://hooks.example.com/in", "https://8.8.8.8/h", "https://[2606:4700::1111]:8443/h"):
        assert SettingsPatch.parse({"notify_webhook_url": url}).notify_webhook_url == url


async def test_the_backend_checks_every_resolved_address() -> None:
    backend = CheckedBackend(())
    with pytest.raises(AddressRefused, match=r"^localhost resolves to 127\.0\.0\.1: .*\(loopback\)$"):
        await backend.checked_address("localhost")
    with pytest.raises(AddressRefused, match=r"^127\.0\.0\.1 is not a public address \(loopback\)$"):
        await backend.checked_address("127.1")
    assert str(await CheckedBackend(parse_networks("127.0.0.0/8")).checked_address("localhost")) == "127.0.0.1"
    assert str(await backend.checked_address("8.8.8.8")) == "8.8.8.8"  # a literal: no lookup


class TlsReceiver(threading.Thread):
    """An HTTPS server on 127.0.0.1 with a certificate for `name` (trustme's CA)."""

    def __init__(self, ca: trustme.CA, name: str) -> None:
        super().__init__(daemon=True)
        self.seen: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.seen.append(self.headers["host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(name).configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def run(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_the_checked_connection_still_verifies_the_certificate_against_the_host_name() -> None:
    """The worker connects to the address it checked, not to the name, yet TLS is verified for
    the name in the URL: a certificate for another name is refused."""
    ca = trustme.CA()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    for cert_name, ok in (("localhost", True), ("other.example", False)):
        receiver = TlsReceiver(ca, cert_name)
        receiver.start()
        try:
            transport = CheckedTransport(parse_networks("127.0.0.0/8"), client_context)
            async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                url = f"https://localhost:{receiver.port}/h"
                if ok:
                    assert (await client.post(url, content=b"{}")).status_code == 204
                    assert receiver.seen == [f"localhost:{receiver.port}"]
                else:
                    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                        await client.post(url, content=b"{}")
                    assert receiver.seen == []
        finally:
            receiver.close()
