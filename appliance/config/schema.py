"""The typed configuration tree.

Every key is declared once here, with its kind, default, unit and a sentence of
documentation. The loader validates against these declarations and
docs/configuration.md is generated from them (`python -m appliance.config.docs`),
so the documentation cannot drift from what the code accepts. A section may also
carry EXAMPLES (title -> TOML), printed under its heading; tests check each one loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import Field, dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from appliance.config.values import Address, ServerSpec

BALANCE_METHODS = ("round-robin", "weighted-round-robin", "least-conn", "most-idle", "random", "hash", "rtt")
PROXY_PROTOCOL_VERSIONS = ("off", "v1", "v2")
BACKEND_PROTOCOLS = ("http/1.1", "h2")
MATCH_KINDS = ("prefix", "exact", "glob", "regex")

# Key kinds understood by the loader (see loader._convert).
INT = "integer"
STR = "string"
BOOL = "boolean"
DURATION = "duration"
SIZE = "size"
ADDRESS = "address"
STR_LIST = "list of strings"
ADDRESS_LIST = "list of addresses"
SERVER_LIST = "list of servers"
NETWORK_LIST = "list of networks"
INT_LIST = "list of integers"
STR_MAP = "table of strings"
TABLE = "table"
TABLE_ARRAY = "array of tables"
TABLE_MAP = "table of named tables"
WORKER_COUNT = "\"auto\" or count"
CPU_LIST = "CPU list"
PATH_LIST = "path or list of paths"

TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
CLIENT_VERIFY = ("off", "optional", "required")
# What the workers speak on a TLS listener (h2: appliance/http/h2_downstream.py).
ALPN_PROTOCOLS = ("h2", "http/1.1", "http/1.0")

REQUIRED = object()

T = TypeVar("T")


def key_name(spec: Field[Any]) -> str:
    """The name a declared key has in the configuration file."""
    return spec.metadata.get("name") or spec.name


def entries(items: list[T] | dict[str, T]) -> Iterator[tuple[Any, T]]:
    """(index or name, entry) of a table array or map, skipping the entries None.

    While the loader collects every problem for `rproxyd -t`, an entry too broken to
    build (a required key missing) is None, so the others keep their index in messages.
    """
    pairs = items.items() if isinstance(items, dict) else enumerate(items)
    return ((at, entry) for at, entry in pairs if entry is not None)


def key(
    default: Any = REQUIRED,
    *,
    kind: str,
    doc: str,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    item: type | None = None,
    name: str | None = None,
) -> Any:
    """Declare one config key: its kind, default, bounds and documentation.

    `name` is the key's name in the file when it cannot be the field's (a Python keyword).
    """
    meta = {
        "name": name,
        "kind": kind,
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "item": item,
        "required": default is REQUIRED,
    }
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerTlsConfig:
    """TLS termination on a listener, as [listener.tls]. See docs/tls.md."""

    enabled: bool = key(
        False, kind=BOOL,
        doc="Terminate TLS on this listener (X-Forwarded-Proto becomes https).",
    )
    certificate: list[str] = key(
        [], kind=PATH_LIST,
        doc="Default certificate chain(s) in PEM, leaf first, for clients whose SNI names no "
        "vhost with its own certificate. Give an ECDSA and an RSA chain to serve both.",
    )
    certificate_key: list[str] = key(
        [], kind=PATH_LIST,
        doc="Private key file for each `certificate`, in the same order; empty: the key is in "
        "the certificate file.",
    )
    min_version: str = key("TLSv1.2", kind=STR, choices=TLS_VERSIONS, doc="Oldest protocol accepted.")
    max_version: str = key("TLSv1.3", kind=STR, choices=TLS_VERSIONS, doc="Newest protocol accepted.")
    ciphers: str = key(
        "ECDHE+AESGCM:ECDHE+CHACHA20", kind=STR,
        doc="OpenSSL cipher list for TLS 1.2 and older (TLS 1.3 suites are `ciphersuites`). The "
        "default has forward secrecy and AEAD only; CBC suites (which IE 11 on Windows 7 and 8.1 "
        "needs with an RSA certificate) are an opt-in, e.g. \"ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES\"; "
        "empty: Python's default list.",
    )
    ciphersuites: str = key("", kind=STR, doc="TLS 1.3 cipher suites; empty: OpenSSL's default.")
    ocsp_stapling: bool = key(
        False, kind=BOOL,
        doc="Staple an OCSP response to every certificate this listener serves (its own and the "
        "vhosts'): the supervisor fetches it from the certificate's OCSP URL (AIA), verifies it, "
        "refreshes it half-way to its nextUpdate and shares it with the workers. See docs/tls.md.",
    )
    ocsp_stapling_file: list[str] = key(
        [], kind=PATH_LIST,
        doc="A DER OCSP response file for each `certificate`, in the same order, stapled instead "
        "of fetching (as nginx's ssl_stapling_file); re-read on reload.",
    )
    alpn: list[str] = key(
        ["h2", "http/1.1"], kind=STR_LIST,
        doc="ALPN protocols offered, in order of preference, from " + ", ".join(ALPN_PROTOCOLS)
        + ". A client that negotiates h2 speaks HTTP/2 ([http2], docs/http2.md); one that "
        "negotiates nothing speaks HTTP/1.x.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """A socket the proxy accepts client connections on."""

    name: str = key(kind=STR, doc="Unique name of the listener, used in logs and metrics.")
    bind: Address = key(kind=ADDRESS, doc="Address and port to listen on, as \"host:port\".")
    backlog: int = key(
        1024, kind=INT, minimum=1, maximum=65535,
        doc="Accept queue length per worker socket (capped by net.core.somaxconn).",
    )
    tls: ListenerTlsConfig = key(
        ListenerTlsConfig(), kind=TABLE, item=ListenerTlsConfig,
        doc="TLS termination, as [listener.tls].",
    )
    proxy_protocol: bool = key(
        False, kind=BOOL,
        doc="Every connection starts with a PROXY protocol header (v1 or v2) from a balancer in "
        "front: its client address becomes the client address everywhere. Only peers in "
        "[proxy] trusted_proxies may connect, which must then not cover everyone; a header "
        "that is invalid, incomplete after header_timeout or from anyone else closes the "
        "connection. On a TLS listener the header comes before the TLS handshake. Listeners "
        "without it never look for a header. See docs/proxy-protocol.md.",
    )
    h2c: bool = key(
        True, kind=BOOL,
        doc="On a plaintext listener, a connection that starts with the HTTP/2 connection preface "
        "(`PRI * HTTP/2.0`, prior knowledge) speaks HTTP/2; any other speaks HTTP/1.x. The "
        "`Upgrade: h2c` dance is never supported. Ignored on a TLS listener (ALPN decides there).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    """An active HTTP probe each worker sends to every server of a backend."""

    path: str = key(
        "", kind=STR, doc="Path to GET, such as \"/healthz\"; empty disables active probes."
    )
    host: str = key("", kind=STR, doc="Host header of the probe; empty: the server's address.")
    expect_status: int = key(200, kind=INT, minimum=100, maximum=599, doc="Status a healthy server answers.")
    interval: float = key(2.0, kind=DURATION, minimum=0.05, doc="Time between probes of one server.")
    timeout: float = key(1.0, kind=DURATION, minimum=0.01, doc="Time a probe may take.")
    rise: int = key(2, kind=INT, minimum=1, doc="Consecutive passes that bring a DOWN server UP.")
    fall: int = key(2, kind=INT, minimum=1, doc="Consecutive failures that take an UP server DOWN.")

    EXAMPLES: ClassVar[dict[str, str]] = {
        "passive and active health checks": """
            [backend.app]
            servers = ["10.0.0.11:8080", "10.0.0.12:8080"]
            max_fails = 3             # passive: 3 failures within fail_window take a server DOWN
            fail_window = "10s"
            down_time = "10s"         # for this long; then it is tried again
            fail_on_5xx = true        # 5xx answers count as failures too

            [backend.app.health]      # active: every worker probes every server
            path = "/healthz"
            expect_status = 200
            interval = "2s"
            timeout = "1s"
            rise = 2                  # passes that bring a DOWN server back
            fall = 2                  # failures that take it DOWN
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderPolicyConfig:
    """Header edits applied in one direction; applied in the order remove, set, add."""

    remove: list[str] = key([], kind=STR_LIST, doc="Header names to remove.")
    set: dict[str, str] = key(
        {}, kind=STR_MAP, doc="Headers to set, replacing any of the same name: { Name = \"value\" }."
    )
    add: dict[str, str] = key({}, kind=STR_MAP, doc="Headers to append, keeping existing ones.")

    EXAMPLES: ClassVar[dict[str, str]] = {
        "header policy per vhost and per rule": """
            [[vhost]]
            name = "shop"
            request_headers = { set = { X-Env = "prod" }, remove = ["X-Debug"] }
            response_headers = { remove = ["Server", "X-Powered-By"], add = { X-Frame-Options = "DENY" } }

            [[vhost.route]]
            path = "/"
            backend = "app"
            request_headers = { add = { X-Rule = "catch-all" } }   # applied after the vhost's
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """A pool of origin servers that routes send requests to."""

    servers: list[ServerSpec] = key(
        kind=SERVER_LIST,
        doc="Origin servers, each \"host:port\" or {address = \"host:port\", weight = N}; "
        "at least one. Weights (default 1) apply to weighted-round-robin, random, least-conn "
        "and hash.",
    )
    connections: int = key(
        32, kind=INT, minimum=1, maximum=10000,
        doc="Persistent keep-alive connections per worker per server. Requests beyond "
        "this wait in the pending queue.",
    )
    connect_timeout: float = key(
        5.0, kind=DURATION, minimum=0.001, doc="Time allowed to open a connection to a server."
    )
    read_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest silence from a server while a response is awaited or streamed; "
        "past it the client gets 504 (or a cut response if it had started).",
    )
    write_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest time a server may leave our writes unread while a request is sent.",
    )
    max_response_header_bytes: int = key(
        64 * 1024, kind=SIZE, minimum=1024,
        doc="Bytes a server may send before its response head (or the trailer section of a "
        "chunked body) is complete; past it the client gets a 502, or a cut response once "
        "it has started (as with nginx's proxy_buffer_size or HAProxy's bufsize), so a "
        "server cannot make a worker buffer an endless head.",
    )
    retry_delay: float = key(
        1.0, kind=DURATION, minimum=0.001,
        doc="Wait before reconnecting to a server after a failed connect; doubles on "
        "each further failure up to retry_delay_max.",
    )
    retry_delay_max: float = key(
        30.0, kind=DURATION, minimum=0.001, doc="Upper bound of the reconnect back-off."
    )
    balance: str = key(
        "round-robin", kind=STR, choices=BALANCE_METHODS,
        doc="How a server is picked for each request; a route may override it. See "
        "docs/routing.md for what each method promises.",
    )
    hash_key: str = key(
        "client-ip", kind=STR,
        doc="What the hash method hashes: \"client-ip\", \"path\", \"header:NAME\" or "
        "\"cookie:NAME\".",
    )
    max_fails: int = key(
        3, kind=INT, minimum=0,
        doc="Passive health: this many failures (failed connects, timeouts, invalid or cut "
        "responses, and 5xx answers when fail_on_5xx) within fail_window mark a server DOWN "
        "for down_time, unless it is the backend's last usable server, which passive checks "
        "never take out. A reused connection the backend closed before answering is no "
        "failure. 0 disables passive marking.",
    )
    fail_window: float = key(
        10.0, kind=DURATION, minimum=0.001, doc="Window in which max_fails failures are counted."
    )
    down_time: float = key(
        10.0, kind=DURATION, minimum=0.001,
        doc="How long a passively failed server gets no traffic before it is tried again.",
    )
    fail_on_5xx: bool = key(
        False, kind=BOOL, doc="Count 5xx responses from a server as passive-health failures."
    )
    retries: int = key(
        2, kind=INT, minimum=0, maximum=10,
        doc="Extra tries, on another server when there is one, for a request whose backend "
        "failed before answering. Only idempotent requests whose body was not streamed are "
        "retried; a POST is never sent twice to answer a server failure.",
    )
    retry_on_status: list[int] = key(
        [], kind=INT_LIST,
        doc="Response statuses that also trigger a retry (e.g. [502, 503]), under the same rules; "
        "when no other server can take the request, the answer is passed on to the client.",
    )
    retry_budget_percent: int = key(
        20, kind=INT, minimum=0, maximum=100,
        doc="Retries may add at most this percentage to the requests a worker sends to the "
        "backend (plus a floor of 10 retries), so retries cannot multiply an outage.",
    )
    health: HealthConfig = key(
        HealthConfig(), kind=TABLE, item=HealthConfig,
        doc="Active health probe, as [backend.NAME.health].",
    )
    tls: bool = key(False, kind=BOOL, doc="Speak TLS to this backend's servers.")
    tls_verify: bool = key(
        True, kind=BOOL,
        doc="Verify the server's certificate against tls_ca and its name against tls_sni (or "
        "the server address).",
    )
    tls_ca: str = key("", kind=STR, doc="CA file or directory for tls_verify; empty: the system's CAs.")
    tls_sni: str = key(
        "", kind=STR, doc="Server name sent (SNI) and verified; empty: the server's host when it is a name.",
    )
    tls_certificate: str = key(
        "", kind=STR, doc="Client certificate chain (PEM) presented to the servers; empty: none.",
    )
    tls_key: str = key("", kind=STR, doc="Key of tls_certificate; empty: in the certificate file.")
    protocol: str = key(
        "http/1.1", kind=STR, choices=BACKEND_PROTOCOLS,
        doc="The protocol spoken to the servers. \"h2\": HTTP/2, over TLS by ALPN (tls = true; "
        "a server that does not choose h2 fails the connection) or by prior knowledge in "
        "plaintext; each connection carries up to the server's SETTINGS_MAX_CONCURRENT_STREAMS "
        "requests at once, so `connections` counts connections, not requests, and one or two "
        "are usually enough. Not with proxy_protocol. See docs/http.md.",
    )
    proxy_protocol: str = key(
        "off", kind=STR, choices=PROXY_PROTOCOL_VERSIONS,
        doc="Send a PROXY protocol header of this version (\"v1\" text, \"v2\" binary) first on "
        "every connection to the servers, carrying the client's address (health probes send a "
        "LOCAL / UNKNOWN one); \"off\": none. Such a connection carries one request and closes "
        "(it is not pooled: its header names one client). See docs/proxy-protocol.md.",
    )

    EXAMPLES: ClassVar[dict[str, str]] = {
        "balancing methods": """
            [backend.app]
            servers = ["10.0.0.11:8080", { address = "10.0.0.12:8080", weight = 3 }]
            # round-robin, weighted-round-robin, least-conn, most-idle, random, hash or rtt
            balance = "least-conn"

            [[vhost]]
            name = "shop"

            [[vhost.route]]
            path = "/cart/"
            backend = "app"
            balance = "hash"               # a rule may choose its own method
            hash_key = "cookie:session"    # or "client-ip", "path", "header:NAME"
        """,
        "failover and retries": """
            [backend.app]
            servers = ["10.0.0.11:8080", "10.0.0.12:8080"]
            connect_timeout = "2s"         # a failed connect moves the request to the next server
            retry_delay = "1s"             # reconnect back-off, doubling up to retry_delay_max
            retries = 2                    # idempotent requests whose body was not streamed
            retry_on_status = [502, 503]   # retried when another server can take the request
            retry_budget_percent = 20      # retries add at most 20% (plus 10) to the requests
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """A rule: requests whose path (and method) match go to a backend. First match wins."""

    backend: str = key(kind=STR, doc="Name of the backend (a [backend.NAME] table).")
    path: str = key(
        "/", kind=STR,
        doc="What the request path (without query) is matched against, as `match` says.",
    )
    match: str = key(
        "prefix", kind=STR, choices=MATCH_KINDS,
        doc="prefix: the path starts with `path`; exact: equals it; glob: shell-style pattern "
        "(* also crosses /); regex: a Python regular expression searched in the path.",
    )
    methods: list[str] = key(
        [], kind=STR_LIST, doc="Methods this rule takes, such as [\"GET\", \"HEAD\"]; empty: any "
        "(but TRACE, unless allow_trace)."
    )
    allow_trace: bool = key(
        False, kind=BOOL,
        doc="Forward TRACE requests. Off: they get 405 with an Allow header, as nginx answers "
        "(TRACE echoes the request, cookies and credentials included, back to the caller).",
    )
    rewrite: str = key(
        "", kind=STR,
        doc="Regular expression applied to the path before it goes to the backend; empty: none.",
    )
    rewrite_to: str = key(
        "", kind=STR,
        doc="Replacement for `rewrite`, with $1 or ${name} for groups. The query string is kept "
        "unless the replacement has its own (a ?).",
    )
    balance: str = key(
        "", kind=STR, choices=("", *BALANCE_METHODS),
        doc="Balancing method for this rule; empty: the backend's.",
    )
    hash_key: str = key("", kind=STR, doc="hash_key for this rule; empty: the backend's.")
    request_headers: HeaderPolicyConfig = key(
        HeaderPolicyConfig(), kind=TABLE, item=HeaderPolicyConfig,
        doc="Edits to request headers on the way to the backend, after the vhost's.",
    )
    response_headers: HeaderPolicyConfig = key(
        HeaderPolicyConfig(), kind=TABLE, item=HeaderPolicyConfig,
        doc="Edits to response headers on the way to the client, after the vhost's.",
    )
    internal_redirect: list[str] = key(
        [], kind=STR_LIST,
        doc="Path globs a backend may send this request to with an internal redirect (an "
        "answer with [proxy] internal_redirect_status and X-Internal-Redirect: PATH), which "
        "makes it a GET without the body (HEAD stays HEAD), as nginx's X-Accel-Redirect; "
        "empty: internal redirects are refused with 502.",
    )
    upgrade: list[str] = key(
        ["websocket"], kind=STR_LIST,
        doc="Protocols a client may switch this rule's requests to with `Upgrade` (HTTP/1.1, "
        "no request body): only these are offered to the backend, with `Connection: upgrade`, "
        "and the connection becomes a tunnel only when the backend answers 101 with one of them "
        "(docs/http.md, \"Upgrade tunnels\"); any other answer is a normal response. Empty: no "
        "upgrade is ever forwarded. `h2c` is refused: it would let a client speak HTTP/2 to the "
        "backend past the proxy.",
    )
    max_tunnels: int = key(
        4096, kind=INT, minimum=0,
        doc="Open upgrade tunnels this rule allows per worker; a handshake beyond it gets 503 "
        "with Retry-After. 0 means no limit.",
    )

    EXAMPLES: ClassVar[dict[str, str]] = {
        "rules: exact, regex, glob and prefix (first match wins)": """
            [[vhost]]
            name = "site"

            [[vhost.route]]              # exact path, GET and HEAD only
            match = "exact"
            path = "/status"
            methods = ["GET", "HEAD"]
            backend = "ops"

            [[vhost.route]]              # a regular expression, searched in the path
            match = "regex"
            path = "^/v[0-9]+/"
            backend = "api"

            [[vhost.route]]              # a shell glob; * also crosses /
            match = "glob"
            path = "/assets/*.js"
            backend = "static"

            [[vhost.route]]              # a prefix (the default match): everything else
            path = "/"
            backend = "app"
        """,
        "URI rewrite": """
            [[vhost]]
            name = "legacy"

            [[vhost.route]]
            path = "/old/"
            rewrite = "^/old/(?P<rest>.*)$"
            rewrite_to = "/new/${rest}"  # $1 or ${name}; /old/a?x=1 goes out as /new/a?x=1
            backend = "app"
        """,
        "internal redirect": """
            [proxy]
            internal_redirect_status = 377   # the default (RProxy's)

            [[vhost]]
            name = "downloads"

            [[vhost.route]]
            path = "/download/"
            backend = "auth"                 # answers 377 with X-Internal-Redirect: /files/...
            internal_redirect = ["/files/*"] # the only targets it may send the request to

            [[vhost.route]]
            path = "/files/"
            backend = "files"
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class SslHeadersConfig:
    """X-SSL-* request headers describing the client's TLS session, as [vhost.ssl_headers].

    Client-sent X-SSL-* headers are always removed, whether these are on or not.
    Certificate headers are only sent when the client presented a verified certificate.
    """

    subject: bool = key(False, kind=BOOL, doc="X-SSL-Subject: the certificate subject (RFC 4514).")
    issuer: bool = key(False, kind=BOOL, doc="X-SSL-Issuer: the certificate issuer (RFC 4514).")
    not_before: bool = key(False, kind=BOOL, doc="X-SSL-NotBefore: start of validity (GMT).")
    not_after: bool = key(False, kind=BOOL, doc="X-SSL-NotAfter: end of validity (GMT).")
    serial: bool = key(False, kind=BOOL, doc="X-SSL-Serial: the serial number in hex.")
    sha1: bool = key(False, kind=BOOL, doc="X-SSL-Sha1: SHA-1 fingerprint of the certificate, hex.")
    sha256: bool = key(False, kind=BOOL, doc="X-SSL-Sha256: SHA-256 fingerprint of the certificate, hex.")
    certificate: bool = key(
        False, kind=BOOL, doc="X-SSL-Certificate: the PEM certificate, URL-encoded (as nginx's "
        "$ssl_client_escaped_cert).",
    )
    cipher: bool = key(False, kind=BOOL, doc="X-SSL-Cipher: the negotiated cipher.")
    protocol: bool = key(False, kind=BOOL, doc="X-SSL-Protocol: TLSv1.2 or TLSv1.3.")
    sni: bool = key(False, kind=BOOL, doc="X-SSL-SNI: the server name the client asked for.")
    extensions: dict[str, str] = key(
        {}, kind=STR_MAP,
        doc="Certificate extensions to send, as { Header-Name = \"OID\" }: string values as text, "
        "others as hex DER.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class VhostConfig:
    """A virtual host: the Host names it answers for and its routes."""

    name: str = key(kind=STR, doc="Unique name of the virtual host.")
    hosts: list[str] = key(
        ["*"], kind=STR_LIST,
        doc="The host name and aliases this vhost answers, globs allowed (\"*.example.com\"). "
        "Exact names win over globs; globs are tried in file order.",
    )
    default: bool = key(
        False, kind=BOOL,
        doc="Answer requests whose Host matches no vhost. Without one, such requests get 404.",
    )
    request_headers: HeaderPolicyConfig = key(
        HeaderPolicyConfig(), kind=TABLE, item=HeaderPolicyConfig,
        doc="Edits to request headers on the way to the backend.",
    )
    response_headers: HeaderPolicyConfig = key(
        HeaderPolicyConfig(), kind=TABLE, item=HeaderPolicyConfig,
        doc="Edits to response headers on the way to the client.",
    )
    route: list[RouteConfig] = key(
        kind=TABLE_ARRAY, item=RouteConfig,
        doc="Rules of this vhost, as [[vhost.route]], tried in file order.",
    )
    certificate: list[str] = key(
        [], kind=PATH_LIST,
        doc="Certificate chain(s) (PEM) served when the client's SNI names one of `hosts`; "
        "empty: the listener's. An ECDSA and an RSA chain may both be given.",
    )
    certificate_key: list[str] = key(
        [], kind=PATH_LIST, doc="Private key file for each `certificate`; empty: in the certificate file.",
    )
    ocsp_stapling_file: list[str] = key(
        [], kind=PATH_LIST,
        doc="A DER OCSP response file for each `certificate`, stapled on listeners with "
        "ocsp_stapling instead of fetching one; re-read on reload.",
    )
    client_verify: str = key(
        "off", kind=STR, choices=CLIENT_VERIFY,
        doc="Client certificates: off, optional (verified when sent), or required. A request "
        "for a vhost with `required` never reaches a backend without a verified certificate.",
    )
    client_ca: str = key("", kind=STR, doc="CA file or directory client certificates are verified against.")
    client_verify_depth: int = key(
        1, kind=INT, minimum=0, maximum=100,
        doc="Most intermediate certificates allowed between a client certificate and client_ca.",
    )
    client_crl: str = key(
        "", kind=STR,
        doc="CRL file (PEM); client certificates it revokes are refused. Reloaded when it changes.",
    )
    ssl_headers: SslHeadersConfig = key(
        SslHeadersConfig(), kind=TABLE, item=SslHeadersConfig,
        doc="X-SSL-* headers sent to the backend, as [vhost.ssl_headers].",
    )
    access_log: bool = key(
        True, kind=BOOL, doc="Write this vhost's requests to the access log (when [access_log] is enabled).",
    )
    phases: str = key(
        "", kind=STR,
        doc="The class of the [phases] module this vhost runs; empty: the module's default class. "
        "See docs/phases.md.",
    )

    EXAMPLES: ClassVar[dict[str, str]] = {
        "virtual hosts": """
            [[vhost]]
            name = "shop"                                        # a label for logs and metrics
            hosts = ["shop.example.com", "*.shop.example.com"]   # its name and aliases
            default = true                                       # also answers unknown Hosts

            [[vhost.route]]
            backend = "app"
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Per-connection and per-request bounds that keep a worker safe under pressure."""

    max_header_bytes: int = key(
        16 * 1024, kind=SIZE, minimum=256,
        doc="Largest request line plus header block, and largest trailer section of a chunked "
        "body; larger gets 431.",
    )
    max_body_bytes: int = key(
        0, kind=SIZE,
        doc="Largest request body; larger gets 413. 0 means no limit: bodies are "
        "streamed, never buffered whole, so the limit protects backends, not the proxy.",
    )
    header_timeout: float = key(
        10.0, kind=DURATION, minimum=0.001,
        doc="Time allowed for a request head to arrive once it has begun (or once the "
        "connection opened); past it the client gets 408.",
    )
    keepalive_timeout: float = key(
        75.0, kind=DURATION, minimum=0.001,
        doc="How long an idle client keep-alive connection is kept open between requests.",
    )
    body_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest silence from a client while its request body is read.",
    )
    send_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest time a client may leave our writes unread before it is disconnected.",
    )
    max_pending: int = key(
        1024, kind=INT, minimum=0,
        doc="Requests that may wait for a free backend connection, per backend per "
        "worker; beyond it the answer is 503 with Retry-After.",
    )
    pending_timeout: float = key(
        10.0, kind=DURATION, minimum=0.001,
        doc="Longest wait in the pending queue before the answer is 503 with Retry-After.",
    )
    write_high_watermark: int = key(
        256 * 1024, kind=SIZE, minimum=1,
        doc="When a peer's unsent output passes this, reading from the other side pauses.",
    )
    write_low_watermark: int = key(
        64 * 1024, kind=SIZE, minimum=0,
        doc="Reading from the other side resumes once the peer's unsent output drops "
        "below this.",
    )
    tunnel_idle_timeout: float = key(
        3600.0, kind=DURATION, minimum=0.001,
        doc="Longest silence in both directions of an upgrade tunnel (a WebSocket, after its 101) "
        "before it is closed.",
    )
    max_pipelined: int = key(
        32, kind=INT, minimum=1,
        doc="Pipelined requests queued per client connection before reading pauses; "
        "reading resumes at half.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2Config:
    """HTTP/2 from clients: what each connection advertises and enforces. See docs/http2.md."""

    max_concurrent_streams: int = key(
        128, kind=INT, minimum=1, maximum=65535,
        doc="Streams a client may have open at once on one connection (nginx's "
        "http2_max_concurrent_streams, 128); more are refused with RST_STREAM.",
    )
    max_header_list_size: int = key(
        64 * 1024, kind=SIZE, minimum=1024, maximum=16 * 1024 * 1024,
        doc="Largest decoded request header list (names, values and 32 bytes per field, RFC 9113 "
        "6.5.2), across HEADERS and CONTINUATION frames; larger gets 431 on that stream.",
    )
    max_frame_size: int = key(
        16384, kind=SIZE, minimum=16384, maximum=16777215,
        doc="Largest frame payload a client may send (SETTINGS_MAX_FRAME_SIZE; the protocol's "
        "minimum, 16 KiB, is HAProxy's and nginx's default too).",
    )
    initial_window_size: int = key(
        65535, kind=SIZE, minimum=1, maximum=2147483647,
        doc="Per-stream receive window for request bodies (nginx's and HAProxy's default, 64 KiB): "
        "a client sends no more of a body than this ahead of what the backend has accepted.",
    )
    connection_window_size: int = key(
        1024 * 1024, kind=SIZE, minimum=65535, maximum=2147483647,
        doc="Receive window for all request bodies of one connection together.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Process-wide proxy behaviour."""

    via: str = key(
        "rproxyd", kind=STR,
        doc="Pseudonym this proxy adds to Via headers in both directions; \"\" disables.",
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = key(
        [IPv4Network("0.0.0.0/0"), IPv6Network("::/0")], kind=NETWORK_LIST,
        doc="Clients whose X-Forwarded-For is kept and appended to; from any other client it is "
        "replaced by the client address. The default trusts everyone (append, as nginx's "
        "$proxy_add_x_forwarded_for does); narrow it on an edge proxy. X-Real-IP is set to the "
        "client address, or kept from a client in these networks when they do not cover everyone.",
    )
    internal_redirect_status: int = key(
        377, kind=INT, minimum=100, maximum=599,
        doc="Backend status that asks for an internal redirect (RProxy's 377).",
    )
    splice_min_bytes: int = key(
        64 * 1024, kind=SIZE, minimum=0,
        doc="Plaintext bodies with a Content-Length and at least this many bytes still to come "
        "after the head are relayed with splice(2) through a pipe, never copied into the proxy: "
        "responses backend socket to client socket, request bodies client socket to backend "
        "socket (such a request is never retried). 0 turns it off.",
    )
    drain_timeout: float = key(
        30.0, kind=DURATION, minimum=0.0,
        doc="On graceful stop, how long in-flight requests may run before being cut.",
    )
    tunnel_drain_timeout: float = key(
        300.0, kind=DURATION, minimum=0.0,
        doc="On graceful stop, reload or upgrade, how long a draining worker keeps its open upgrade "
        "tunnels (WebSockets) before closing them; new tunnels go to the new generation. The "
        "worker lives until both this and drain_timeout have passed or nothing is left.",
    )
    request_id: bool = key(
        True, kind=BOOL,
        doc="Give every request an X-Request-Id (sent to the backend, logged) when it has none. A "
        "client's own X-Request-Id is kept only from trusted_proxies; from anyone else it is "
        "replaced (or, with this off, removed).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    """The supervisor and its workers: how many, where they run, how failures are handled."""

    workers: int = key(
        0, kind=WORKER_COUNT, maximum=256,
        doc="Worker processes: \"auto\" (stored as 0, the default) runs one per CPU of `cpus` "
        "or, without it, one per CPU this process may use.",
    )
    cpus: list[int] = key(
        [], kind=CPU_LIST,
        doc="CPUs to pin workers to, as [0, 1] or \"0-3,6\"; worker i runs on the i-th CPU of "
        "the list, round-robin. Empty: every CPU this process may use.",
    )
    heartbeat_timeout: float = key(
        30.0, kind=DURATION, minimum=0.2,
        doc="A worker stamps a heartbeat every half of this; one silent for longer is sent "
        "SIGABRT (its Python traceback goes to standard error), then SIGKILL, and replaced.",
    )
    boot_timeout: float = key(
        30.0, kind=DURATION, minimum=0.1,
        doc="Time a new worker has to start accepting. On reload, a generation whose workers "
        "miss it is abandoned and the old one keeps serving.",
    )
    respawn_backoff: float = key(
        0.5, kind=DURATION, minimum=0.0,
        doc="A worker that dies is respawned at once; if its slot's worker dies again within "
        "respawn_backoff_max, the wait starts at this and doubles each time.",
    )
    respawn_backoff_max: float = key(
        30.0, kind=DURATION, minimum=0.0, doc="Upper bound of the respawn back-off."
    )
    runtime_dir: str = key(
        "", kind=STR,
        doc="Directory for status.json (generation, reload results, bound addresses), which "
        "`rproxyd --reload` reads. Empty: $RUNTIME_DIRECTORY (set by systemd's "
        "RuntimeDirectory=), else /run/rproxyd.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Where the supervisor and workers write their log."""

    file: str = key(
        "", kind=STR,
        doc="Log file path, opened in append mode by every process and reopened on SIGUSR1 "
        "(for logrotate). Empty: standard error (the journal under systemd).",
    )
    level: str = key(
        "info", kind=STR, choices=("debug", "info", "warning", "error"),
        doc="Least severe level written.",
    )
    format: str = key(
        "text", kind=STR, choices=("text", "json"),
        doc="text: one plain line per event; json: one JSON object per line (python-json-logger). "
        "Either way, lines about a request carry its request id.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Session resumption across workers, reloads and upgrades; see docs/tls.md."""

    session_tickets: bool = key(True, kind=BOOL, doc="Issue and accept session tickets.")
    ticket_lifetime: float = key(
        7200.0, kind=DURATION, minimum=1, maximum=604800,
        doc="How long a ticket (and a cached session) may be resumed.",
    )
    ticket_rotation: float = key(
        3600.0, kind=DURATION, minimum=1,
        doc="A new random ticket key every this long; ticket_lifetime/ticket_rotation + 1 keys "
        "(at most 64) are kept so every live ticket still decrypts.",
    )
    ticket_count: int = key(
        1, kind=INT, minimum=1, maximum=10,
        doc="TLS 1.3 tickets sent per handshake. A client resumes with one; each further "
        "ticket costs an encryption per handshake and serves one more parallel resumption.",
    )
    ticket_key_files: list[str] = key(
        [], kind=STR_LIST,
        doc="Ticket keys from files instead of random ones (e.g. in /etc/rproxy, shared by a "
        "fleet): nginx's 48- or 80-byte files or HAProxy's base64 lines. The first file's key "
        "encrypts, all decrypt. Rotate by replacing the files and sending HUP.",
    )


ACCESS_LOG_FIELDS = (
    "time", "client", "vhost", "rule", "method", "path", "protocol", "host", "status", "bytes_in",
    "bytes_out", "backend", "server", "connect_time", "first_byte_time", "upstream_time", "duration",
    "queue_wait", "tls_version", "tls_cipher", "tls_resumed", "request_id",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLogConfig:
    """One JSON record per request, written in batches by each worker; see docs/observability.md."""

    enabled: bool = key(
        False, kind=BOOL,
        doc="Write the access log. Off by default so a bare configuration writes nowhere "
        "unexpected; the packaged /etc/rproxy/rproxy.toml turns it on.",
    )
    destination: str = key(
        "file", kind=STR, choices=("file", "stdout", "syslog"),
        doc="file: `file`, reopened on SIGUSR1; stdout: standard output (the journal under "
        "systemd); syslog: one datagram per record to `syslog_address`.",
    )
    file: str = key("/var/log/rproxy/access.log", kind=STR, doc="Access log path for destination = \"file\".")
    fields: list[str] = key(
        list(ACCESS_LOG_FIELDS), kind=STR_LIST,
        doc="Fields of each record, in this order: " + ", ".join(ACCESS_LOG_FIELDS) + ".",
    )
    syslog_address: str = key(
        "/dev/log", kind=STR, doc="Unix socket path, or host:port (UDP), for destination = \"syslog\".",
    )
    syslog_facility: str = key(
        "local0", kind=STR,
        choices=("user", "daemon", "local0", "local1", "local2", "local3", "local4", "local5",
                 "local6", "local7"),
        doc="Syslog facility of the records.",
    )
    flush_interval: float = key(
        0.1, kind=DURATION, minimum=0.001, maximum=10,
        doc="Records are formatted and written in batches at least this often.",
    )
    batch: int = key(
        256, kind=INT, minimum=1,
        doc="A batch is written early once it holds this many records (bounds the pause "
        "formatting a batch costs the worker: about 14 µs per record, see docs/observability.md).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin listener (/metrics, /status, /healthz), served by the supervisor."""

    enabled: bool = key(
        False, kind=BOOL,
        doc="Serve the admin endpoints. Off by default, so two instances on one host do not "
        "compete for the port; the packaged /etc/rproxy/rproxy.toml turns it on.",
    )
    bind: Address = key(
        Address("127.0.0.1", 9180), kind=ADDRESS, doc="Address of the admin listener; port 0 picks one "
        "(status.json shows it).",
    )
    allow: list[IPv4Network | IPv6Network] = key(
        [IPv4Network("127.0.0.0/8"), IPv6Network("::1/128")], kind=NETWORK_LIST,
        doc="Clients allowed to use the admin endpoints; others get 403. Loopback only by default.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PhasesConfig:
    """Python phases: the operator's own code in the request path; see docs/phases.md.

    `rproxyd -t` imports the module in a child process and reports import errors, unknown
    phase names and wrong signatures with the module's file and line; each worker imports
    it when it starts, so a reload runs the file as it is then.
    """

    module: str = key(
        "", kind=STR,
        doc="Path of the Python file that defines the phases (a subclass of "
        "appliance.phases.Phases), such as \"/etc/rproxy/phases/site.py\"; empty: no phases. "
        "Imported anew by every reload.",
    )
    class_name: str = key(
        "", kind=STR, name="class",
        doc="The class vhosts run unless they name their own (`phases` in [[vhost]]); empty: "
        "the module's one subclass of Phases.",
    )
    max_peer_pools: int = key(
        64, kind=INT, minimum=1, maximum=65536,
        doc="Most pools each worker keeps for servers that only an upstream_peer phase names (a Peer "
        "or \"host:port\" no [backend] lists); a request to a further one gets 503.",
    )
    peer_pool_idle_timeout: float = key(
        60.0, kind=DURATION, minimum=0.05,
        doc="A pool of such a server that no request used for this long, and that has nothing in "
        "flight, is closed (its connections too); the next request to it opens a new one.",
    )

    EXAMPLES: ClassVar[dict[str, str]] = {
        "phases for every vhost, and one vhost with its own class": """
            [phases]
            module = "/etc/rproxy/phases/examples/api_key.py"
            class = "ApiKey"         # optional when the module defines one class

            [[vhost]]
            name = "api"
            hosts = ["api.example.com"]
            phases = "ApiKey"        # a vhost may name any class of the module

            [[vhost.route]]
            backend = "app"
        """,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration of one generation."""

    listener: list[ListenerConfig] = key(
        kind=TABLE_ARRAY, item=ListenerConfig, doc="Listening sockets, as [[listener]]."
    )
    backend: dict[str, BackendConfig] = key(
        kind=TABLE_MAP, item=BackendConfig, doc="Backends by name, as [backend.NAME]."
    )
    vhost: list[VhostConfig] = key(
        kind=TABLE_ARRAY, item=VhostConfig,
        doc="Virtual hosts, as [[vhost]]. A request whose Host matches none goes to the "
        "first vhost whose hosts include \"*\", else gets 404.",
    )
    limits: LimitsConfig = key(
        LimitsConfig(), kind=TABLE, item=LimitsConfig, doc="Limits and timeouts, as [limits]."
    )
    proxy: ProxyConfig = key(
        ProxyConfig(), kind=TABLE, item=ProxyConfig, doc="Proxy behaviour, as [proxy]."
    )
    http2: Http2Config = key(
        Http2Config(), kind=TABLE, item=Http2Config, doc="HTTP/2 from clients, as [http2].",
    )
    process: ProcessConfig = key(
        ProcessConfig(), kind=TABLE, item=ProcessConfig,
        doc="Supervisor and worker processes, as [process].",
    )
    log: LogConfig = key(LogConfig(), kind=TABLE, item=LogConfig, doc="Logging, as [log].")
    tls: TlsConfig = key(
        TlsConfig(), kind=TABLE, item=TlsConfig, doc="Session tickets shared by all workers, as [tls].",
    )
    access_log: AccessLogConfig = key(
        AccessLogConfig(), kind=TABLE, item=AccessLogConfig, doc="The access log, as [access_log].",
    )
    admin: AdminConfig = key(
        AdminConfig(), kind=TABLE, item=AdminConfig, doc="The admin listener, as [admin].",
    )
    phases: PhasesConfig = key(
        PhasesConfig(), kind=TABLE, item=PhasesConfig, doc="Python phases, as [phases].",
    )
    # Where this generation was read from; set by the loader, not a config key.
    sources: tuple[Path, ...] = field(default=(), compare=False)
