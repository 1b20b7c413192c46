"""The OpenAPI 3.1 description served at /openapi.json: what the server enforces, with this server's limits
(settings), so a client generated from it refuses what the service would refuse."""
from __future__ import annotations

from rendezvous.settings import Settings
from shared.errors import ErrorCode
from shared.registration import MAX_NAMESPACE_BYTES, NAMESPACE_RE

# An Ed25519 peer ID (the only key type the service takes, shared/envelope.py): the identity multihash of
# the 36-byte protobuf key, 38 bytes with a leading zero, in base58btc: always 12D3KooW and 44 more, 52 in all.
PEER_ID_PATTERN = "^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$"
COOKIE_PATTERN = "^[A-Za-z0-9_-]+$"  # base64url without padding (rendezvous/cookie.py)
NAMESPACE_PATTERN = f"^{NAMESPACE_RE.pattern}$"  # the one namespace rule (shared/registration.py)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def document(settings: Settings) -> dict:
    """The description of a server with these settings."""
    limits = settings.limits
    codes = [(kind.code, kind.status) for kind in ErrorCode]

    def errors(*statuses: int) -> dict:
        return {str(status): {"description": ", ".join(code for code, s in codes if s == status),
                              "content": {"application/json": {"schema": _ERROR}}} for status in statuses}

    namespace = {"name": "namespace", "in": "query", "required": False,
                 "description": f"Namespace (1-{MAX_NAMESPACE_BYTES} bytes of letters, digits and . _ ~ : / @ + = -)",
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_NAMESPACE_BYTES,
                            "pattern": NAMESPACE_PATTERN, "default": settings.default_namespace}}
    peer_id = {"name": "peer_id", "in": "path", "required": True, "description": "Ed25519 peer ID (12D3KooW...)",
               "schema": {"type": "string", "minLength": 52, "maxLength": 52, "pattern": PEER_ID_PATTERN}}
    envelope_body = {"required": True, "description": f"At most {limits.max_body_bytes} bytes, sent within "
                                                      f"{limits.body_read_timeout} s",
                     "content": {"application/octet-stream": {"schema": {
                         "type": "string", "format": "binary", "maxLength": limits.max_body_bytes,
                         "description": "A marshalled libp2p signed envelope; see the README for the payload"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "holepunch-services rendezvous", "version": "1.0.0",
                 "description": "Signed, TTL-expiring peer registrations on Redis; discovery with paged cookies."},
        "paths": {
            "/peers": {
                "post": {"summary": "Register (or renew) the signing peer in a namespace",
                         "requestBody": envelope_body,
                         "responses": {"201": {"description": "Registered", "content": _json("Registered")},
                                       "200": {"description": "Renewed, superseding the previous registration",
                                               "content": _json("Registered")},
                                       **errors(400, 408, 409, 413, 429, 503, 507)}},
                "get": {"summary": "Discover live peers of a namespace, one page at a time",
                        "parameters": [namespace,
                                       {"name": "limit", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 1,
                                                   "maximum": limits.discover_limit_max,
                                                   "default": limits.discover_limit_default}},
                                       {"name": "cookie", "in": "query", "required": False,
                                        "description": "Cookie of the previous page: continue after it",
                                        "schema": {"type": "string", "pattern": COOKIE_PATTERN}}],
                        "responses": {"200": {"description": "A page of peers (NDJSON with Accept: "
                                                             "application/x-ndjson; then the cookie is in "
                                                             "X-Rendezvous-Cookie)",
                                              "content": {**_json("Page"), "application/x-ndjson": {
                                                  "schema": {"$ref": "#/components/schemas/Peer"}}}},
                                      **errors(400, 429, 503)}},
            },
            "/peers/watch": {
                "get": {"summary": "Watch a namespace: its changes as Server-Sent Events (EventSource)",
                        "description": (
                            "First a snapshot: `snapshot` events of at most 100 peers each (data: {Namespace, "
                            "Peers, More}; all but the last have More: true and no id), or, with Last-Event-ID (an event "
                            "ID from any replica) or a GET /peers `cookie`, the changes after that position. Then "
                            "`join`, `renew`, `leave`, `expire`, each with a Peer (TTL 0 for leave and expire) and "
                            "an `id:` to resume from. A position the namespace's events no longer hold (past "
                            f"{limits.watch_stream_max_events} events or {limits.watch_resume_seconds} s) gets "
                            "`resync`, then a fresh snapshot; a change may be told twice, never missed. Expiries are "
                            "told within a second. A heartbeat comment every "
                            f"{limits.watch_heartbeat_seconds} s; the stream ends after "
                            f"{limits.watch_max_seconds} s, and the client resumes with Last-Event-ID. At most "
                            f"{limits.watch_max_per_source} open streams per address, all replicas together."),
                        "parameters": [namespace,
                                       {"name": "cookie", "in": "query", "required": False,
                                        "description": "Cookie of a GET /peers page: the changes after it, no snapshot",
                                        "schema": {"type": "string", "pattern": COOKIE_PATTERN}},
                                       {"name": "Last-Event-ID", "in": "header", "required": False,
                                        "description": "The last event ID received: resume after it",
                                        "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"}}],
                        "responses": {"200": {"description": "The event stream",
                                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                                      **errors(400, 429, 503)}},
            },
            "/peers/{peer_id}": {
                "get": {"summary": "One peer's live registration in a namespace", "parameters": [peer_id, namespace],
                        "responses": {"200": {"description": "The peer", "content": _json("Peer")},
                                      **errors(400, 404, 429, 503)}},
                "delete": {"summary": "Deregister: a signed request of the peer, or an operator's admin token",
                           "parameters": [peer_id, {**namespace, "description": "Admin only: the namespace to "
                                                    "remove the peer from (all when absent)",
                                                    "schema": {k: v for k, v in namespace["schema"].items()
                                                               if k != "default"}}],
                           "security": [{}, {"admin": []}],
                           "requestBody": {**envelope_body, "required": False},
                           "responses": {"200": {"description": "Removed from these namespaces",
                                                 "content": {"application/json": {"schema": {
                                                     "type": "object", "properties": {
                                                         "ID": {"type": "string"},
                                                         "Removed": {"type": "array", "items": {"type": "string"}}}}}}},
                                         **errors(400, 401, 404, 408, 409, 413, 429, 503)}},
            },
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Redis is reachable",
                                "responses": {"200": {"description": "ready"}, **errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text format"}}}},
        },
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"],
                          "properties": {"error": {"type": "string", "enum": [code for code, _ in codes]},
                                         "message": {"type": "string"}}},
                "Peer": {"type": "object", "required": ["Schema", "ID", "Addrs", "TTL"],
                         "properties": {"Schema": {"const": "peer"},
                                        "ID": {"type": "string", "pattern": PEER_ID_PATTERN},
                                        "Addrs": {"type": "array", "maxItems": limits.max_addrs,
                                                  "items": {"type": "string", "maxLength": limits.max_addr_length}},
                                        "SignedPeerRecord": {"type": "string", "description": "base64, as registered"},
                                        "TTL": {"type": "integer", "description": "seconds left, rounded up"}}},
                "Page": {"type": "object", "required": ["Namespace", "Peers", "Cookie", "More"],
                         "properties": {"Namespace": {"type": "string"},
                                        "Peers": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}},
                                        "Cookie": {"type": "string", "pattern": COOKIE_PATTERN},
                                        "More": {"type": "boolean"}}},
                "Registered": {"type": "object", "properties": {
                    "ID": {"type": "string", "pattern": PEER_ID_PATTERN},
                    "Namespace": {"type": "string"},
                    "TTL": {"type": "integer", "minimum": limits.ttl_min, "maximum": limits.ttl_max},
                    "ExpiresAt": {"type": "integer", "description": "Unix ms, Redis clock"}}},
            },
        },
    }
