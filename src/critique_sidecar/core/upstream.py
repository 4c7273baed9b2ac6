"""Model servers as the catalog names them: base URLs, TLS trust and the operator's credential.

A catalog model points at a named upstream (`[upstreams.<name>]`): one model server, or several
replicas of one, each reached at a base URL such as `http://vllm-a:8000/v1` or
`https://api.example.com/v1`. A product path maps onto it by its endpoint's suffix
(`/api/v1/chat/completions` -> `<base>/chat/completions`); both front doors and the generated
Envoy config use the same mapping.

The credential the model server expects (vLLM's `--api-key`, a provider key) is never in the
catalog: the catalog says which header carries it and where the secret is read from (an
environment variable or a file), and `Credentials` reads it once at start-up. The exchange adds
it after the client's key has been stripped, so a model server never sees a `crt_` key."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers a credential must never replace: hop-by-hop, routing, framing, and ours.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade", "cookie"}
)


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """One replica: scheme, host, port and the path every endpoint suffix is appended to."""

    scheme: str
    host: str
    port: int
    path: str  # "" or "/v1": never a trailing slash

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """host[:port] as a Host header writes it (the port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    def url(self, suffix: str) -> str:
        """The full URL of an endpoint suffix ("/chat/completions") on this replica."""
        return self.origin + self.path + suffix


def parse_base_url(text: str) -> BaseUrl:
    """http(s)://host[:port][/path]: no user info, query or fragment (they would be dropped or
    leak a secret into logs); the path is kept without its trailing slash."""
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError(f"base URL {text!r}: no spaces or control characters")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"base URL {text!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"base URL {text!r}: no user info (put the credential in the upstream's credential)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"base URL {text!r}: no query string or fragment")
    host = parts.hostname
    if not host:
        raise ValueError(f"base URL {text!r}: no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"base URL {text!r}: the port must be a number from 1 to 65535") from None
    path = parts.path.rstrip("/")
    if path and (not path.startswith("/") or "//" in path or any(s in (".", "..") for s in path.split("/"))):
        raise ValueError(f"base URL {text!r}: the path must be plain segments such as /v1")
    return BaseUrl(parts.scheme, host, port, path)


class Credential(BaseModel):
    """Where the model server's credential is read from and the header it goes in. The secret
    itself is never written here: `env` names an environment variable, `file` a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = "authorization"
    # Written before the secret: "Bearer " for an Authorization header, "" for x-api-key style.
    prefix: str = "Bearer "
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: Path | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        name = v.lower()
        if not _HEADER_NAME.fullmatch(name) or name in _RESERVED_HEADERS or name.startswith(("x-critique-", ":")):
            raise ValueError(f"{v!r} cannot carry a credential (a header name that is not reserved or ours)")
        return name

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise ValueError("the prefix may not hold control characters")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Credential:
        if (self.env is None) == (self.file is None):
            raise ValueError("give the secret's source: exactly one of env (a variable name) or file (a path)")
        return self

    def source(self) -> str:
        """Where the secret comes from, for messages (never the secret)."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


class UpstreamServer(BaseModel):
    """One model server (or replicas of one), as `[upstreams.<name>]` in the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_urls: tuple[str, ...] = Field(min_length=1)
    # Trust for https base URLs: a PEM bundle; unset, the system's (ca_file_default()).
    ca_file: Path | None = None
    credential: Credential | None = None

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        parsed = [parse_base_url(u) for u in v]
        if len({(p.scheme, p.path) for p in parsed}) > 1:
            raise ValueError(
                "replicas of one upstream share a scheme and a path (list other servers as another upstream)"
            )
        if parsed[0].tls and len({p.host for p in parsed}) > 1:
            # One TLS server name per upstream: Envoy verifies every replica against it.
            raise ValueError("https replicas of one upstream share a host name (one certificate name to verify)")
        if len({(p.host, p.port) for p in parsed}) < len(parsed):
            raise ValueError("a base URL is listed twice")
        return v

    def replicas(self) -> tuple[BaseUrl, ...]:
        cached: tuple[BaseUrl, ...] | None = self.__dict__.get("_parsed")
        if cached is None:
            cached = tuple(parse_base_url(u) for u in self.base_urls)
            object.__setattr__(self, "_parsed", cached)  # frozen model: parse once
        return cached

    @property
    def tls(self) -> bool:
        return self.replicas()[0].tls

    @property
    def path(self) -> str:
        return self.replicas()[0].path


# Where a PEM bundle of the system's trusted CAs usually is (Debian, Ubuntu, Alpine; RHEL's
# compatibility link too). Envoy has no "use the system's roots" setting for upstreams.
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def ca_file_default() -> str:
    for path in SYSTEM_CA_FILES:
        if Path(path).exists():
            return path
    return SYSTEM_CA_FILES[0]


class CredentialError(ValueError):
    """A credential the catalog names cannot be read; the message says which, never the secret."""


@dataclass(frozen=True, slots=True)
class UpstreamHeader:
    name: str
    value: str


def read_credential(name: str, credential: Credential, environ: dict[str, str] | None = None) -> UpstreamHeader:
    """The header to send upstream `name`. A secret with a line break or other control character
    is refused: it could split the header and inject another one."""
    env = os.environ if environ is None else environ
    if credential.env is not None:
        secret = env.get(credential.env)
        if secret is None:
            raise CredentialError(f"upstream {name}: the credential's {credential.source()} is not set")
    else:
        assert credential.file is not None
        try:
            secret = credential.file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(
                f"upstream {name}: cannot read the credential's {credential.source()}: {type(exc).__name__}"
            ) from None
    if not secret or any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret) or not secret.isascii():
        raise CredentialError(
            f"upstream {name}: the credential's {credential.source()} is empty or holds characters a header cannot carry"
        )
    return UpstreamHeader(credential.header, credential.prefix + secret)


def read_credentials(
    upstreams: dict[str, UpstreamServer], environ: dict[str, str] | None = None
) -> dict[str, UpstreamHeader]:
    """Every upstream's credential header, read once (start-up fails on one that cannot be read)."""
    return {
        name: read_credential(name, server.credential, environ)
        for name, server in upstreams.items()
        if server.credential is not None
    }
