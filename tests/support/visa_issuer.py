"""A second, foreign GA4GH visa issuer on its own loopback port, for the visa and DRS tests."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey

from support.live import free_port, serving


@dataclass
class Issuer:
    url: str
    key: ECKey
    hits: Counter

    @property
    def jku(self) -> str:
        return f"{self.url}/jwks.json"

    def visa(self, sub: str, value: str, *, type_: str = "ControlledAccessGrants", by: str | None = "dac",
             exp: int | None = None, iat: int | None = None, iss: str | None = None, jku: str | None = None,
             key: ECKey | None = None, conditions: list | None = None, source: str = "https://dac.example.org"
             ) -> str:
        now = int(time.time())
        obj = {"type": type_, "asserted": now - 3600, "value": value, "source": source}
        if by is not None:
            obj["by"] = by
        if conditions is not None:
            obj["conditions"] = conditions
        signer = key or self.key
        header = {"alg": "ES256", "typ": "vnd.ga4gh.visa+jwt", "kid": signer.thumbprint(),
                  "jku": jku or self.jku}
        claims = {"iss": iss or self.url, "sub": sub, "iat": iat or now - 60, "exp": exp or now + 3600,
                  "jti": uuid.uuid4().hex, "ga4gh_visa_v1": obj}
        return jwt.encode(header, claims, signer, algorithms=["ES256"])


def issuer_serving() -> Iterator[Issuer]:
    """A visa issuer on its own loopback port. /other-jwks.json and /rogue-jwks.json serve keys too,
    so a fetch from them would succeed — the tests assert they are never asked."""
    key, rogue = ECKey.generate_key("P-256", private=True), ECKey.generate_key("P-256", private=True)
    hits: Counter = Counter()
    app = FastAPI()

    def keyset(k: ECKey) -> dict:
        return {"keys": [{**k.as_dict(private=False), "kid": k.thumbprint(), "use": "sig", "alg": "ES256"}]}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/jwks.json")
    def jwks_() -> dict:
        hits["jwks"] += 1
        return keyset(key)

    @app.get("/other-jwks.json")
    def other() -> dict:
        hits["other"] += 1
        return keyset(key)

    @app.get("/rogue-jwks.json")
    def rogue_() -> dict:
        hits["rogue"] += 1
        return keyset(rogue)

    with serving(app, free_port()) as url:
        hits.clear()
        issuer = Issuer(url, key, hits)
        issuer.rogue_key = rogue  # type: ignore[attr-defined]
        yield issuer
