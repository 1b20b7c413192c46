"""Environment variables filled from Google Secret Manager at start, for the relay VM (Cloud Run maps
secrets to variables itself; a Container-Optimized OS VM does not).

For any variable NAME, a variable NAME_SECRET=projects/P/secrets/S/versions/V makes the process read that
secret version into NAME before its settings are parsed. The VM's service account token comes from the
metadata server, so no credential is ever in the image, the metadata or the environment.
"""
from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.request

SUFFIX = "_SECRET"
_RESOURCE = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")
_TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
_ACCESS_URL = "https://secretmanager.googleapis.com/v1/{}:access"


class SecretError(RuntimeError):
    pass


def fill_from_secrets(environ: dict[str, str] | os._Environ = os.environ, fetch=None) -> list[str]:
    """Set NAME from NAME_SECRET for every such pair; returns the names filled."""
    wanted = {name[: -len(SUFFIX)]: ref for name, ref in environ.items() if name.endswith(SUFFIX) and ref}
    if not wanted:
        return []
    fetch = fetch or _fetch
    for name, ref in wanted.items():
        if not _RESOURCE.fullmatch(ref):
            raise SecretError(f"{name}{SUFFIX}: must look like projects/P/secrets/S/versions/V, got {ref!r}")
        environ[name] = fetch(ref)
    return sorted(wanted)


def access_token() -> tuple[str, float]:
    """The service account's OAuth access token from the metadata server, and seconds until it expires."""
    request = urllib.request.Request(_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        reply = json.load(answer)
    return reply["access_token"], float(reply.get("expires_in", 300))


class AccessTokenCredentials:
    """redis-py's credential provider for Memorystore's IAM AUTH: each new connection authenticates with the
    service account's access token as its password, fetched again a minute before it expires."""

    def __init__(self, fetch=access_token, clock=time.monotonic):
        self._fetch, self._clock = fetch, clock
        self._token, self._renew_at = "", float("-inf")

    def get_credentials(self) -> tuple[str, str]:
        if self._clock() >= self._renew_at:
            try:
                token, lifetime = self._fetch()
            except (OSError, KeyError, ValueError) as exc:
                raise SecretError(f"cannot get an access token for Redis IAM AUTH: {exc}") from None
            self._token, self._renew_at = token, self._clock() + max(0.0, lifetime - 60)
        return "default", self._token

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()


def _fetch(resource: str) -> str:
    try:
        token, _ = access_token()
        request = urllib.request.Request(_ACCESS_URL.format(resource), headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return base64.b64decode(json.load(answer)["payload"]["data"]).decode().strip()
    except (OSError, KeyError, ValueError) as exc:
        raise SecretError(f"cannot read secret {resource}: {exc}") from None
