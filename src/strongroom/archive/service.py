"""The encrypted archive's state changes, as one namespace: ``service.<name>`` for the web, API, CLI, jobs
and the capabilities that extend the archive (access, imaging, catalog).

The code lives in one module per idea: ``uploads`` (inbox uploads), ``ingest``, ``files``, ``datasets``
(versions, shares, dataset visibility), ``authz`` (read grants, holds, downloads), ``user_keys`` and
``accession``. State changes happen there only; object storage calls are made outside long transactions
where possible, and every step is idempotent so a crash anywhere can be retried.
"""

from __future__ import annotations

from .accession import new_accession
from .authz import (
    GRANT_PROVIDERS,
    HOLD_RULES,
    HoldRule,
    ReadGrant,
    authorize_download,
    authorize_read,
    authorize_review,
    record_download,
    record_review_view,
)
from .datasets import (
    DATASET_DOWNLOAD_POLICIES,
    DATASET_READERS,
    RELEASE_CHECKS,
    VERSION_MARKS,
    create_dataset,
    dataset_downloadable,
    deprecate_version,
    edit_draft,
    list_datasets,
    may_publish,
    publish_version,
    release_version,
    share_dataset,
    unshare_dataset,
    version_files,
    version_marks,
    visible_dataset,
)
from .files import (
    add_sealed_file,
    add_sealed_files,
    delete_unpublished_file,
    download_header,
    get_file,
    insert_sealed_files,
    list_files,
    seal_into_storage,
)
from .ingest import ingest, ingest_bundle
from .uploads import (
    MAX_BUNDLE_FILES,
    abort_upload,
    begin_upload,
    complete_upload,
    put_part,
    receive_bundle,
    receive_small_plaintext,
    upload_parts,
)
from .user_keys import add_user_key, list_user_keys, revoke_user_key, user_key

__all__ = [
    "DATASET_DOWNLOAD_POLICIES", "DATASET_READERS", "GRANT_PROVIDERS", "HOLD_RULES", "HoldRule", "MAX_BUNDLE_FILES",
    "RELEASE_CHECKS", "ReadGrant", "VERSION_MARKS",
    "abort_upload", "add_sealed_file", "add_sealed_files", "add_user_key", "authorize_download", "authorize_read",
    "authorize_review",
    "begin_upload", "complete_upload", "create_dataset", "dataset_downloadable", "delete_unpublished_file",
    "deprecate_version", "download_header", "edit_draft", "get_file", "ingest", "ingest_bundle", "insert_sealed_files",
    "list_datasets",
    "list_files", "list_user_keys", "new_accession", "publish_version", "put_part", "receive_bundle",
    "receive_small_plaintext", "record_download",
    "record_review_view", "release_version", "revoke_user_key", "seal_into_storage", "share_dataset",
    "unshare_dataset", "upload_parts", "user_key", "version_files", "version_marks",
    "visible_dataset",
    "may_publish",
]
