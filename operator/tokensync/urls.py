"""The one URL parser: token URLs, allowed-token-urls prefixes and allowed host patterns.

Every decision about a URL (is it acceptable, does a prefix admit it, is its host allowed)
and the connection itself use `parse_url` below, which builds on urllib3's own parser
(`urllib3.util.parse_url`, what the transport connects with). Before parsing it refuses
every spelling on which two parsers, or a client and a server, could disagree: a
backslash (WHATWG and urllib3 end the host there, `urlsplit` does not), percent-encoded
`.`, `/`, `\\` (servers decode them into path structure), dot segments (urllib3 removes
them, so `/legit/../evil` is sent as `/evil`), userinfo, fragments, whitespace and control
characters, and hosts that are not plain DNS names or canonical IP addresses
(`2130706433` and `0x7f.1` are 127.0.0.1 to the resolver).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import unquote

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url as _urllib3_parse_url

DEFAULT_PORTS = {"http": 80, "https": 443}

_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
# A dot segment, also with a path parameter (`..;x`), which Tomcat-style servers strip.
_DOT_SEGMENT = re.compile(r"\.\.?(;.*)?")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A last label the resolver reads as a number: the whole name is then an IPv4 address in
# one of inet_aton's legacy spellings.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


class URLProblem(ValueError):
    """Why a URL is refused. The text never repeats the URL (it may hold userinfo)."""


@dataclass(frozen=True)
class ParsedURL:
    """A URL as the transport connects to it, with its comparable parts normalised."""

    scheme: str  # "https" or "http"
    host: str  # lowercase, IDNA A-labels, no trailing dot, IPv6 compressed without []
    port: int  # explicit or the scheme's default
    path: str  # as sent ("" when absent); never holds dot segments or encoded separators
    query: str | None
    connect_host: str  # what DNS is asked (keeps a trailing dot: no search-domain lookup)
    explicit_port: bool = False

    @property
    def is_ip(self) -> bool:
        return _ip(self.host) is not None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    @property
    def request_target(self) -> str:
        """The path and query as sent in the request line."""
        target = self.path or "/"
        return target if self.query is None else f"{target}?{self.query}"

    def __str__(self) -> str:
        return self.origin + self.request_target


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _raw_parts(text: str) -> tuple[str, str]:
    """(authority, path) exactly as written, before any normalisation."""
    rest = text.split("://", 1)[1] if "://" in text else ""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path_end = min((i for i in (tail.find(c) for c in "?#") if i >= 0), default=len(tail))
    return authority, tail[:path_end]


def _refuse_raw(text: str) -> None:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise URLProblem("must not contain whitespace or control characters")
    if "\\" in text:
        raise URLProblem("must not contain a backslash")
    if "#" in text:
        raise URLProblem("must not contain a fragment")
    if _ENCODED_SEPARATOR.search(text):
        raise URLProblem("must not contain a percent-encoded '.', '/' or '\\' (%2e, %2f, %5c)")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in DEFAULT_PORTS:
        raise URLProblem("must be an absolute https:// URL")
    authority, path = _raw_parts(text)
    if "@" in authority:
        raise URLProblem("must not contain user information (put credentials in clientSecretRef)")
    if "%" in authority:
        raise URLProblem("must not contain '%' in the host")
    _refuse_bad_port(authority)
    if any(_DOT_SEGMENT.fullmatch(segment) for segment in path.split("/")):
        raise URLProblem("must not contain a dot segment (/./ or /../)")
    if _separator_lookalike(unquote(path, errors="replace")):
        raise URLProblem("must not contain a character that servers may read as '.', '/' or '\\'")


def _separator_lookalike(text: str) -> bool:
    """A non-ASCII character whose compatibility form holds '.', '/' or '\\' (U+FF0E,
    U+FF0F, U+FF3C fullwidth, U+2024 one dot leader, ...): servers that "best-fit"
    Unicode to ASCII read them as path syntax."""
    return any(
        not c.isascii() and any(sep in unicodedata.normalize("NFKC", c) for sep in "./\\")
        for c in text
    )


def _refuse_bad_port(authority: str) -> None:
    if authority.startswith("[") and "]" not in authority:
        raise URLProblem("is not a valid URL")
    after_host = authority.rsplit("]", 1)[1] if authority.startswith("[") else authority
    if ":" not in after_host:
        return
    port = after_host.rsplit(":", 1)[1]
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise URLProblem("has an invalid port")


def _normal_host(raw_host: str) -> tuple[str, str]:
    """(comparable host, host to connect to) for urllib3's already lowercased/IDNA host."""
    if raw_host.startswith("["):
        ip = _ip(raw_host[1:-1])
        if not isinstance(ip, ipaddress.IPv6Address):
            raise URLProblem("has an invalid IPv6 address")
        return ip.compressed, ip.compressed
    connect = raw_host
    host = raw_host[:-1] if raw_host.endswith(".") else raw_host
    if not host.isascii() or not _DNS_NAME.fullmatch(host):
        raise URLProblem("has an invalid host name")
    ip = _ip(host)
    if ip is not None:
        return ip.compressed, host
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        raise URLProblem("has a host that is not a canonical IPv4 address (a.b.c.d)")
    return host, connect


def parse_url(text: str) -> ParsedURL:
    """Parse an absolute http(s) URL, or raise URLProblem saying what is wrong."""
    if not isinstance(text, str):
        raise URLProblem("must be a string")
    _refuse_raw(text)
    try:
        parts = _urllib3_parse_url(text)
    except (LocationParseError, ValueError, UnicodeError):
        raise URLProblem("is not a valid URL") from None
    if parts.auth is not None:
        raise URLProblem("must not contain user information (put credentials in clientSecretRef)")
    if not parts.host:
        raise URLProblem("must be an absolute https:// URL")
    scheme = (parts.scheme or "").lower()
    host, connect_host = _normal_host(parts.host)
    if parts.port is not None and not 0 < parts.port < 65536:
        raise URLProblem("has an invalid port")
    return ParsedURL(
        scheme=scheme,
        host=host,
        port=parts.port if parts.port is not None else DEFAULT_PORTS[scheme],
        path=parts.path or "",
        query=parts.query,
        connect_host=connect_host,
        explicit_port=parts.port is not None,
    )


def url_problem(text: str) -> str | None:
    """Why `text` is not an acceptable URL, or None."""
    try:
        parse_url(text)
    except URLProblem as problem:
        return str(problem)
    return None


# --------------------------------------------------------------------------------------
# allowed-token-urls prefixes


def parse_prefix(text: str) -> ParsedURL:
    """An allowed-token-urls prefix: scheme, host, optional port and path, no query."""
    prefix = parse_url(text.strip())
    if prefix.query is not None or text.strip().endswith("?"):
        raise URLProblem("an allowed-token-urls prefix has no query")
    return prefix


def _path_within(prefix_path: str, path: str) -> bool:
    """Whole-segment prefix: `/a/` and `/a` admit `/a/token`; neither admits `/ab`."""
    if prefix_path in ("", "/"):
        return True
    if prefix_path.endswith("/"):
        return path.startswith(prefix_path)
    return path == prefix_path or path.startswith(prefix_path + "/")


def prefix_admits(prefix: ParsedURL, url: ParsedURL) -> bool:
    """Same scheme, host and port; the prefix's path a whole-segment prefix of the URL's."""
    return (
        prefix.scheme == url.scheme
        and prefix.host == url.host
        and prefix.port == url.port
        and _path_within(prefix.path, url.path)
    )


def prefixes_admit(url: str, prefixes: str) -> bool:
    """Whether any of the comma-separated prefixes admits `url`. Unparseable URLs and
    prefixes admit nothing."""
    try:
        parsed = parse_url(url)
    except URLProblem:
        return False
    for text in prefixes.split(","):
        if not text.strip():
            continue
        try:
            prefix = parse_prefix(text)
        except URLProblem:
            continue
        if prefix_admits(prefix, parsed):
            return True
    return False


# --------------------------------------------------------------------------------------
# --allowed-token-hosts patterns


def normal_host_pattern(pattern: str) -> str:
    """A host pattern in the form hosts are compared in: lowercase, IDNA labels (wildcards
    kept), no trailing dot, IPv6 compressed without brackets."""
    text = pattern.strip().lower().rstrip(".")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    ip = _ip(bare)
    if ip is not None:
        return ip.compressed
    labels = []
    for label in text.split("."):
        if label.isascii():
            labels.append(label)
        else:
            try:
                labels.append(label.encode("idna").decode("ascii"))
            except UnicodeError:
                labels.append(label)  # matches no valid host
    return ".".join(labels)


def host_allowed(url: ParsedURL, patterns: tuple[str, ...]) -> bool:
    """Whether the URL's parsed host matches one of the patterns (fnmatch; empty: any)."""
    if not patterns:
        return True
    return any(fnmatchcase(url.host, normal_host_pattern(p)) for p in patterns if p.strip())
