"""Names the dead-code check (`vulture`, run by `make test`) cannot see used. Never imported or run.

Routes, CLI commands, jobs, validators and event hooks are recognised by their decorators
(`[tool.vulture] ignore_decorators` in pyproject.toml). What is left is used by something vulture does
not read: a framework, the database, JSON on the wire, a Jinja template or the tests. Add a name here
only with its reason; anything else vulture reports is dead and goes.
"""
# ruff: noqa
# mypy: ignore-errors

# -- frameworks call or read these ------------------------------------------------------------------
# Alembic revision modules
revision, down_revision, branch_labels, depends_on, upgrade, downgrade
# pydantic / pydantic-settings
model_config
_.settings_customise_sources, dotenv_settings, file_secret_settings  # the hook's signature
# SQLAlchemy: declarative base, TypeDecorator hooks, connection options
type_annotation_map, cache_ok, _.process_bind_param, _.process_result_value, _.isolation_level
# fsspec calls these on a filesystem and its files (fs.py: StrongroomFileSystem, StrongroomFile)
protocol, root_marker, _.unstrip_protocol, _.ls, _.cat_file, _.put_file, _._fetch_range
# httpx calls a transport's handle_request (bounded_http.BoundedTransport)
_.handle_request
# pynetdicom configuration and responses (imaging/scp.py)
_.STORE_RECV_CHUNKED_DATASET, _.tempdir, _.LOG_HANDLER_LEVEL
_.maximum_pdu_size, _.require_called_aet, _.maximum_associations, _.network_timeout, _.dimse_timeout
_.ErrorComment
# pydicom keywords the synthetic corpus sets on its datasets (imaging/synthetic.py)
(
    _.AcquisitionDate, _.AcquisitionNumber, _.AcquisitionTime, _.AdditionalPatientHistory,
    _.BitsAllocated, _.BitsStored, _.BodyPartExamined, _.CodeMeaning, _.CodeValue,
    _.CodingSchemeDesignator, _.Columns, _.ContentDate, _.ContentTime, _.DeviceSerialNumber,
    _.FrameOfReferenceUID, _.HighBit, _.ImageComments, _.ImageOrientationPatient,
    _.ImagePositionPatient, _.ImageType, _.ImplementationClassUID, _.InstanceCreationDate,
    _.InstanceCreationTime, _.InstanceNumber, _.InstitutionAddress, _.InstitutionName,
    _.InstitutionalDepartmentName, _.IssuerOfPatientID, _.KVP, _.Manufacturer, _.ManufacturerModelName,
    _.MediaStorageSOPClassUID, _.MediaStorageSOPInstanceUID, _.Modality, _.OperatorsName,
    _.OtherPatientIDsSequence, _.PatientAddress, _.PatientAge, _.PatientBirthDate, _.PatientName,
    _.PatientPosition, _.PatientSex, _.PatientWeight, _.PhotometricInterpretation,
    _.PhysiciansOfRecord, _.PixelData, _.PixelRepresentation, _.PixelSpacing,
    _.PositionReferenceIndicator, _.ProcedureCodeSequence, _.ProtocolName, _.ReferencedImageSequence,
    _.ReferencedSOPClassUID, _.ReferencedSOPInstanceUID, _.ReferringPhysicianName,
    _.RequestAttributesSequence, _.RequestedProcedureID, _.RescaleIntercept, _.RescaleSlope, _.Rows,
    _.SOPClassUID, _.SOPInstanceUID, _.SamplesPerPixel, _.ScheduledProcedureStepID, _.SeriesDate,
    _.SeriesDescription, _.SeriesInstanceUID, _.SeriesNumber, _.SeriesTime, _.SliceLocation,
    _.SliceThickness, _.SoftwareVersions, _.SourceApplicationEntityTitle, _.SpecificCharacterSet,
    _.StationName, _.StudyDate, _.StudyDescription, _.StudyID, _.StudyInstanceUID, _.StudyTime,
    _.TransferSyntaxUID, _.TypeOfPatientID, _.WindowCenter, _.WindowWidth
)

# -- database columns and relationships: written here, read by SQL, reports, templates ----------------
uploaded_by, created_by, shared_by, shared_at, granted_by, credential, last_used_at, state_hash
bytes_received, closed_at, action_count, reviewed_by, reviewed_at, review_note, last_error
memberships, changed_by

# -- JSON on the wire: API response fields, token claims, serialised records ------------------------
your_roles, owner_project, shared_into_mine, next_after, passports, no_methods_development
destination, actions, reviewed, ga4gh_passport_v1, exp, jti
format  # audit/anchor.py: part of a signed checkpoint
compress_type  # archive/zipdownload.py: zipfile reads it from the ZipInfo
retain_device_identity, retain_institution_identity  # imaging settings, passed on as a dict
input_path  # strategies/api.py: RunOut, the run's extract as people name it
made_with  # archive/api.py: VersionOut, what the version was made with (strategies' runs)
strategy_sha256  # strategies/api.py: RequestOut, the SHA-256 of the named strategy version
legal_hold, legal_hold_at, legal_hold_by, deletion_state, project_last_used_at, project_last_use  # retention/api.py
beacon_url  # federation/peers_api.py: HubOut, where the hub's Beacon is
without_cluster_account, cluster_note  # compute/api.py: BookingOut, members left out of the reservation
archive_key  # federation: a peer's crypt4gh archive key (HubOut, the peer table), kept for the dataset sync slice
harvested_at  # federation/models.py RemoteEntry: when the peer's entry was last seen, for operators reading the table

# -- the generated de-identification table (imaging/deid_table.py) -----------------------------------
SAFE_PRIVATE_EDITION, OPTION_FIELDS, vm
rtn_long_full_dates, rtn_long_modif_dates, clean_struct_cont, clean_graph, rtn_pat_chars, rtn_dev_id
rtn_inst_id, rtn_uids, rtn_safe_priv, std_comp_iod

# -- Jinja templates read these -------------------------------------------------------------------------
snippet, thumbnail, time_from_archive, jsonld, _.jsonld, _.short_description, qr_svg_data_uri

# -- the tests and benchmarks use these ----------------------------------------------------------------
corpus  # imaging/synthetic.py: the synthetic DICOM corpus
password_hash_parameters  # identity/secrets.py: the test that production hashes at full cost reads it
_.enabled  # identity/oidc.py
first_segment, last_segment, skip_in_first  # archive/c4gh.py: segment_span()'s named result
credential_id  # identity/principal.py: set for every principal, read by nothing yet (meant for the audit trail)
log_keep  # imaging/deid/plan.py: read by position (entry[5]) in the engine's hot loop
edition  # imaging/deid/result.py: the PS3.15 edition a result was made under, for callers' records

# -- declared by "module:attr" in a capability's includeme (capabilities.py imports them by name) ----------
dataset_download_policy, entitlement_grant, entitlement_reader, visa_grant, visa_reader  # access: grant providers
body_passports  # access: DRS POST bodies' passports (archive.drs.PASSPORT_VERIFIERS)
landing_url  # catalog: where a dataset's URL leads the public (archive.web.LANDING_PAGES)
QUARANTINE_RULE, DESTINATION_SETTING, PROFILE_SETTING, check_destination  # imaging: hold rule, project settings, setting check
# the DICOMweb index columns (imaging/models.py): written from dicomindex's dict, read by getattr in dicomweb/query.py
study_time, accession_number, study_id, study_description, series_description
HOLD_RULE, DESTINATIONS_SETTING, REVIEWERS_SETTING, APPROVALS_SETTING, EXPIRY_SETTING  # airlock: hold rule, settings
SOURCES_SETTING  # airlock: the projects a project accepts exports from
check_approvals, check_reviewers, check_destinations, nav_context  # airlock: setting checks, the navigation's count
PACKAGE_MIRROR_SETTING  # workspaces: the package mirror project setting
check_entries  # dicomweb: the move destinations setting check (dicomweb/__init__.py)
content_removed_at  # airlock: set by the sweep, shown on the request page (Jinja) and in the API
revoked_by  # access/models.py VisaRevocation: who revoked the visa, read by people
expand  # archive/drs.py: DRS's `expand` (query and POST body); accepted, nothing to expand (bundles do not nest)
dataset_version_id, override_by  # airlock/models.py: recorded for the audit trail (which version, which PI), read by people
is_member_anywhere  # projects: identity's data-role check
release_check  # strategies: the archive's RELEASE_CHECKS
add_templates  # capabilities.py: for capabilities with their own templates (tests/support/capdemo uses it)

# -- stats: figures the JSON, CSV and page read by name (getattr / model_fields), and the view hook ---------
countries_shared_with, external_sharing_events, datasets_published, generated_at, definitions  # stats/api.py, service.py
count_landing_view  # stats/views.py: declared as a catalogue hook in stats' includeme
on_release  # catalog/dois.py: archive's RELEASE_HOOKS (declared in catalog's includeme)
serve_cached_landing  # catalog/fast_path.py: strongroom.app's PRE_ROUTING (declared in catalog's includeme)
listener_pid  # catalog/generation.py: the PostgreSQL listener's backend, for operators and tests
dataset_viewer  # dicomweb/web.py: archive.web.DATASET_VIEWERS (declared in dicomweb's includeme)
datacite_xml  # catalog/datacite.py: the DataCite XML record, for oai_datacite (OAI-PMH) and the schema tests
_.hide  # catalog/datacite_client.py: the documented client call (findable → registered); sync sends event=hide itself
record_facts  # catalog/dois.py: the effective DOI's DataCite record, for content negotiation and oai_datacite

# -- fees ---------------------------------------------------------------------------------------------------
currency  # fees/api.py StatementOut: always SEK, stated for the finance system reading the JSON
credits_id, issued_by  # fees/models.py IssuedStatement: which version a credit note credits, who issued; for people
# -- compute ---------------------------------------------------------------------------------------------------
reservation_detail  # compute/models.py: the scheduler's last word on a booking, shown on the calendar page and in the API
gpu_weeks_booked  # compute/service.py: GPU-weeks held in a span, the API of the meter (compute/metering.py), used by tests
gpu_week_meter  # compute/metering.py: the fees capability's GPU-week meter (declared in compute's includeme)

# VAI (vai/): JSON on the wire (ModelOut.uploaded, ReleaseOut.evaluation); onnxruntime's session options and
# onnx's model proto, set for the libraries to read
uploaded, evaluation, _.intra_op_num_threads, _.ir_version
# VAI: the pydicom keywords of the synthetic SEG and SR (vai/synthetic.py) the tests and the demo write for the
# reference standard; preprocess (an image only, no SR/SEG) and reference_objects: the tests use them
(
    _.SegmentationType, _.ContentCreatorName, _.ContentLabel, _.SegmentAlgorithmType, _.SegmentLabel,
    _.SegmentNumber, _.SegmentedPropertyCategoryCodeSequence, _.SegmentedPropertyTypeCodeSequence,
    _.NumberOfFrames, _.LossyImageCompression, _.ContinuityOfContent, _.ConceptNameCodeSequence,
    _.CompletionFlag, _.VerificationFlag, _.MappingResource, _.TemplateIdentifier, _.ContentTemplateSequence,
    _.RelationshipType, _.ConceptCodeSequence,
)
preprocess, reference_objects
# -- sftp --------------------------------------------------------------------------------------------------------
# sftp/server.py: asyncssh calls these by name (SSHServer's authentication callbacks, SFTPServer's operations)
begin_auth, password_auth_supported, kbdint_auth_supported, host_based_auth_supported, public_key_auth_supported
auth_completed, format_user, format_group, realpath, lstat, setstat, fsetstat, lsetstat, posix_rename, readlink
symlink, statvfs, fstatvfs
in_platform_reader  # workspaces: archive.authz.IN_PLATFORM_READERS entry (registered by name in includeme)
members_changed  # workspaces, compute: projects.service.PROJECT_CHANGED listeners (registered by name in includeme)
# workspaces/fuse.py: mfusepy calls these operations (and reads use_ns) by name; ClusterAccount.set_at: when it was set
use_ns, readdir, statfs, mknod, setxattr, removexattr, utimens, set_at
# -- federation sync ------------------------------------------------------------------------------------------
# hooks registered by name in federation/__init__.py (visas: trusted issuers, dataset aliases; catalog: notices)
mirror_notice, peer_visa_issuers, mirror_aliases
withdraw_keys  # sftp: identity.service.CREDENTIAL_REVOKERS
withdraw_reservations  # compute: identity.service.CREDENTIAL_REVOKERS
received_at, synced_at  # federation/models.py: when a body arrived / a mirror was last pushed, for operators
dataset_push_link  # federation/web.py: archive.web.DATASET_VIEWERS entry (registered by name in includeme)
active_key  # federation/models.py: set and cleared in Python, read by the database's unique constraint
reconnect  # generation.py: a lost listener connects again now (tests/test_decision_cache.py; operators)
PatientID  # imaging/synthetic.py: pydicom keyword attributes, written into the generated instances
