"""Federation: the public GA4GH Beacon v2 (aggregate counts over published imaging data, "< 5" below five),
peer hubs registered by operators with pinned keys, signed hub-to-hub requests audited on both sides,
federated search over the peers' beacons, and the peers' public catalogues harvested as remote entries.
Dataset sync (``sync.py``): a released dataset pushed to a peer (headers re-encrypted to its archive key, bodies
byte for byte, checked there against a signed manifest) becomes a read-only mirror whose access the origin's
visas decide.
See docs/federation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.federation.models")
    config.add_api_router("strongroom.federation.api:router")
    config.add_api_router("strongroom.federation.peers_api:router")
    config.add_web_router("strongroom.federation.exchange:router")  # signed hub-to-hub calls: not for clients
    config.add_web_router("strongroom.federation.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.federation.cli:app", name="federation")
    config.add_jobs("strongroom.federation.jobs")
    config.add_settings("federation")
    config.add_hook("strongroom.catalog.search:REMOTE_SOURCES", "strongroom.federation.service:remote_entries")
    config.add_hook("strongroom.access.visas:TRUSTED_ISSUER_SOURCES", "strongroom.federation.sync:peer_visa_issuers")
    config.add_hook("strongroom.access.visas:DATASET_ALIASES", "strongroom.federation.sync:mirror_aliases")
    config.add_hook("strongroom.catalog.landing:NOTICES", "strongroom.federation.sync:mirror_notice")
    config.add_hook("strongroom.archive.web:DATASET_VIEWERS", "strongroom.federation.web:dataset_push_link")
