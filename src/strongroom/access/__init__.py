"""Controlled access: applications, entitlements, GA4GH visas and passports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capabilities import Stage

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_settings("access")
    config.add_models("strongroom.access.models")
    config.add_api_router("strongroom.access.api:router")
    config.add_web_router("strongroom.access.web:router")
    config.add_api_router("strongroom.access.visas_api:router", stage=Stage.AFTER_PAGES)
    config.add_jobs("strongroom.access.lifecycle")
    config.add_cli("strongroom.access.cli:app", name="access")  # on the hub host: the signing key
    # Ways into the archive's read check (archive.service), in this order: entitlements, then visas.
    config.add_grant_provider("strongroom.access.grants:entitlement_grant")
    config.add_grant_provider("strongroom.access.visas:visa_grant")
    config.add_dataset_reader("strongroom.access.grants:entitlement_reader")
    config.add_dataset_reader("strongroom.access.visas:visa_reader")
    config.add_download_policy("strongroom.access.grants:dataset_download_policy")
    # Handlers, deciders and reviewers read applications and decide who sees data: MFA at login (identity).
    config.add_data_role_check("strongroom.access.policies:holds_access_role")
    # Passports in a DRS POST body are verified like the X-GA4GH-Passport header.
    config.add_hook("strongroom.archive.drs:PASSPORT_VERIFIERS", "strongroom.access.visas_api:body_passports")
