"""The OpenAPI 3.1 description served at /openapi.json."""
from shared.errors import ErrorCode

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict:
    return {str(s): {"description": ", ".join(k.code for k in ErrorCode if k.status == s),
                     "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


_NAMESPACE = {"name": "namespace", "in": "query", "required": False,
              "description": "Namespace (1-255 bytes of letters, digits and . _ ~ : / @ + = -); default 'default'",
              "schema": {"type": "string", "maxLength": 255, "pattern": "^[A-Za-z0-9._~:/@+=-]+$"}}
_PEER_ID = {"name": "peer_id", "in": "path", "required": True, "description": "Ed25519 peer ID (12D3KooW...)",
            "schema": {"type": "string"}}
_ENVELOPE_BODY = {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary",
               "description": "A marshalled libp2p signed envelope; see the README for the payload"}}}}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "holepunch-services rendezvous", "version": "1.0.0",
             "description": "Signed, TTL-expiring peer registrations on Redis; discovery with paged cookies."},
    "paths": {
        "/peers": {
            "post": {"summary": "Register (or renew) the signing peer in a namespace", "requestBody": _ENVELOPE_BODY,
                     "responses": {"201": {"description": "Registered",
                                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registered"}}}},
                                   "200": {"description": "Renewed, superseding the previous registration",
                                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registered"}}}},
                                   **_errors(400, 409, 413, 429, 503, 507)}},
            "get": {"summary": "Discover live peers of a namespace, one page at a time",
                    "parameters": [_NAMESPACE,
                                   {"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                   {"name": "cookie", "in": "query", "required": False,
                                    "description": "Cookie of the previous page: continue after it",
                                    "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "A page of peers (NDJSON with Accept: application/x-ndjson;"
                                                         " then the cookie is in X-Rendezvous-Cookie)",
                                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}},
                                                      "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/Peer"}}}},
                                  **_errors(400, 429, 503)}},
        },
        "/peers/{peer_id}": {
            "get": {"summary": "One peer's live registration in a namespace", "parameters": [_PEER_ID, _NAMESPACE],
                    "responses": {"200": {"description": "The peer",
                                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Peer"}}}},
                                  **_errors(400, 404, 429, 503)}},
            "delete": {"summary": "Deregister: a signed request of the peer, or an operator's admin token",
                       "parameters": [_PEER_ID, {**_NAMESPACE, "description": "Admin only: the namespace to "
                                                 "remove the peer from (all when absent)"}],
                       "security": [{}, {"admin": []}],
                       "requestBody": {**_ENVELOPE_BODY, "required": False},
                       "responses": {"200": {"description": "Removed from these namespaces",
                                             "content": {"application/json": {"schema": {
                                                 "type": "object", "properties": {
                                                     "ID": {"type": "string"},
                                                     "Removed": {"type": "array", "items": {"type": "string"}}}}}}},
                                     **_errors(400, 401, 404, 409, 429, 503)}},
        },
        "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {"get": {"summary": "Redis is reachable",
                            "responses": {"200": {"description": "ready"}, **_errors(503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
    },
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string", "enum": [k.code for k in ErrorCode]},
                                     "message": {"type": "string"}}},
            "Peer": {"type": "object", "required": ["Schema", "ID", "Addrs", "TTL"],
                     "properties": {"Schema": {"const": "peer"}, "ID": {"type": "string"},
                                    "Addrs": {"type": "array", "items": {"type": "string"}},
                                    "SignedPeerRecord": {"type": "string", "description": "base64, as registered"},
                                    "TTL": {"type": "integer", "description": "seconds left, rounded up"}}},
            "Page": {"type": "object", "required": ["Namespace", "Peers", "Cookie", "More"],
                     "properties": {"Namespace": {"type": "string"},
                                    "Peers": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}},
                                    "Cookie": {"type": "string"}, "More": {"type": "boolean"}}},
            "Registered": {"type": "object", "properties": {
                "ID": {"type": "string"}, "Namespace": {"type": "string"}, "TTL": {"type": "integer"},
                "ExpiresAt": {"type": "integer", "description": "Unix ms, Redis clock"}}},
        },
    },
}
