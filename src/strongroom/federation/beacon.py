"""GA4GH Beacon v2 answers over imaging facts (pure: no web or database imports).

Facts come in as :class:`Study` rows (one per imaging study of a published dataset, with its dataset's
disease codes); answers go out as Beacon v2 framework documents. Granularity is ``boolean`` or ``count``,
never ``record``: a request for records is answered with counts.

Disclosure control (docs/federation.md, "Small counts and differencing"): a count is private when it is 1–4,
and no answer, nor any set of answers an anonymous client can combine, may pin one down. Hiding each small
count on its own is not enough (exact totals minus exact siblings give it back; a 0 for two terms proves two
cells do not overlap), so:

- every number shown (``numTotalResults``, facet counts) is rounded to the nearest multiple of 5, and only counts
  of at least 5 are shown as numbers (a 5 means 5–7);
- one term (or none) with 1–4 matches: ``exists: true`` at ``boolean`` granularity, ``info.count`` ``"< 5"``
  (the term is listed in ``filtering_terms`` anyway, so its presence is public);
- two or more terms with fewer than 5 matches, **zero included**: ``exists: false``, ``boolean``,
  ``info.count`` ``"< 5"`` — the same answer whatever the count, so a 0 proves no disjointness;
- the facets of an unfiltered answer show ``"< 5"`` for 1–4; those of a filtered answer (each cell is then a
  combination of terms) leave out every cell below 5, as they leave out 0;
- sex and age band hold one value per study, so their cells add up to at most the total: their terms are listed,
  known and counted only with 5 or more studies (below that, exactly as absent), so no lower bound exists for
  a small cell to be pinned against the total.

Filtering terms are ontology CURIEs: DICOM modality codes (``DCM:CT``), SNOMED CT body structures
(``SNOMED:51185008`` thoracic structure, from DICOM's Body Part Examined through CID 4031), ICD-10 codes
(``ICD10:C34``) where a dataset names them, sex (``NCIT:C16576`` female, ``NCIT:C20197`` male) and age bands
(``SRAGE:40-49``) where recorded. Terms are ANDed; a term this beacon does not know matches nothing (and is
named in ``info.unknownFilters``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..small_counts import MIN_COUNT, ROUND_TO, shown  # the hub's one small-count rule

API_VERSION = "v2.0.0"
DATASET, STUDY = "dataset", "imagingStudy"
ENTRY_PATHS = {DATASET: "datasets", STUDY: "imaging_studies"}
SCHEMAS = {DATASET: "beacon-dataset-v2.0.0", STUDY: "strongroom-imaging-study-v1.0.0"}

# DICOM CID 29 (acquisition modality) and a few object modalities: code → label
MODALITY_LABELS = {
    "CR": "Computed Radiography", "CT": "Computed Tomography", "DX": "Digital Radiography",
    "MG": "Mammography", "MR": "Magnetic Resonance", "NM": "Nuclear Medicine", "OT": "Other",
    "PT": "Positron emission tomography", "RF": "Radio Fluoroscopy", "SEG": "Segmentation",
    "SM": "Slide Microscopy", "SR": "SR Document", "US": "Ultrasound", "XA": "X-Ray Angiography",
    "OCT": "Optical Coherence Tomography", "IO": "Intra-oral Radiography", "PX": "Panoramic X-Ray",
    "ECG": "Electrocardiography", "RTSTRUCT": "Radiotherapy Structure Set",
}
# DICOM Body Part Examined (CID 4031) → SNOMED CT body structure
BODY_PARTS = {
    "ABDOMEN": ("818981001", "Abdomen"), "BRAIN": ("12738006", "Brain"), "BREAST": ("76752008", "Breast"),
    "CHEST": ("51185008", "Thorax"), "HEAD": ("69536005", "Head"), "HEART": ("80891009", "Heart"),
    "KIDNEY": ("64033007", "Kidney"), "KNEE": ("72696002", "Knee"), "LIVER": ("10200004", "Liver"),
    "LUNG": ("39607008", "Lung"), "NECK": ("45048000", "Neck"), "PELVIS": ("12921003", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"), "SPINE": ("421060004", "Spine"), "HIP": ("24136001", "Hip"),
    "SHOULDER": ("16982005", "Shoulder"), "COLON": ("71854001", "Colon"), "SKULL": ("89546000", "Skull"),
    "THYROID": ("69748006", "Thyroid"), "ANKLE": ("70258002", "Ankle"), "WRIST": ("74670003", "Wrist"),
    "HAND": ("85562004", "Hand"), "FOOT": ("56459004", "Foot"), "PANCREAS": ("15776009", "Pancreas"),
    "EYE": ("81745001", "Eye"), "WHOLEBODY": ("38266002", "Entire body"),
}
SEXES = {"F": ("NCIT:C16576", "female"), "M": ("NCIT:C20197", "male")}
ICD10 = re.compile(r"^ICD-?10(?:-CM)?[: ]\s*([A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?)$", re.IGNORECASE)
FACETS = ("modality", "bodyPart", "disease", "sex", "ageBand")
# One value per study: a facet's cells are disjoint and add up to at most the total (differencing pins a small cell)
EXCLUSIVE = frozenset({"sex", "ageBand"})


@dataclass(frozen=True)
class Study:
    """One imaging study of a published dataset, as the imaging index knows it."""

    dataset: str
    modalities: frozenset[str]
    body_parts: frozenset[str]  # DICOM Body Part Examined, upper case
    diseases: frozenset[str] = frozenset()  # ICD-10 codes of its dataset
    sex: str = ""  # F | M | "" (not recorded)
    age_band: str = ""  # e.g. "40-49" | "" (not recorded)


@dataclass(frozen=True)
class Term:
    id: str
    label: str
    facet: str
    value: str


def disease_codes(keywords: Iterable[str]) -> frozenset[str]:
    """ICD-10 codes a catalogue entry names among its keywords (``ICD10:C34``, ``ICD-10 C34.1``)."""
    return frozenset(m.group(1).upper() for k in keywords if (m := ICD10.match(k.strip())))


def age_band(years: int) -> str:
    low = max(0, years) // 10 * 10
    return f"{low}-{low + 9}" if low < 90 else "90+"


def term_of(facet: str, value: str) -> Term:
    if facet == "modality":
        return Term(f"DCM:{value}", MODALITY_LABELS.get(value, value), facet, value)
    if facet == "bodyPart":
        code, label = BODY_PARTS.get(value, (None, value.title()))
        return Term(f"SNOMED:{code}" if code else f"SRBODY:{value}", label, facet, value)
    if facet == "disease":
        return Term(f"ICD10:{value}", f"ICD-10 {value}", facet, value)
    if facet == "sex":
        curie, label = SEXES[value]
        return Term(curie, label, facet, value)
    return Term(f"SRAGE:{value}", f"age {value} years", facet, value)


def _values(study: Study, facet: str) -> Iterable[str]:
    if facet == "modality":
        return study.modalities
    if facet == "bodyPart":
        return study.body_parts
    if facet == "disease":
        return study.diseases
    if facet == "sex":
        return (study.sex,) if study.sex else ()
    return (study.age_band,) if study.age_band else ()


def _counts(studies: Iterable[Study]) -> Counter[tuple[str, str]]:
    return Counter((facet, v) for s in studies for facet in FACETS for v in _values(s, facet))


def _public(counts: Counter[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (facet, value) pairs this beacon admits to: every one present, except a sex or age band with fewer than
    5 studies (its presence would be a lower bound that the total pins: see the module's docstring)."""
    return {pair for pair, n in counts.items() if pair[0] not in EXCLUSIVE or n >= MIN_COUNT}


def terms(studies: Iterable[Study]) -> list[Term]:
    """Every filtering term the published data has (sex and age bands: with 5 or more studies), sorted by facet
    then id."""
    return sorted((term_of(f, v) for f, v in _public(_counts(studies))),
                  key=lambda t: (FACETS.index(t.facet), t.id))


_PART_OF_SNOMED = {code: part for part, (code, _) in BODY_PARTS.items()}
_SEX_OF_NCIT = {curie.upper(): sex for sex, (curie, _) in SEXES.items()}


def parse(term_id: str) -> tuple[str, str] | None:
    """(facet, value) of a filtering term id, matched without regard to case; None if it is none of ours."""
    prefix, _, local = term_id.strip().partition(":")
    prefix, local = prefix.upper(), local.strip()
    if not local:
        return None
    if prefix == "DCM":
        return "modality", local.upper()
    if prefix == "SNOMED":
        return ("bodyPart", _PART_OF_SNOMED[local]) if local in _PART_OF_SNOMED else None
    if prefix == "SRBODY":
        return "bodyPart", local.upper()
    if prefix == "ICD10":
        return "disease", local.upper()
    if prefix == "NCIT":
        return ("sex", _SEX_OF_NCIT[term_id.strip().upper()]) if term_id.strip().upper() in _SEX_OF_NCIT else None
    if prefix == "SRAGE":
        return "ageBand", local
    return None


def matching(studies: Sequence[Study], filters: Sequence[str]) -> tuple[list[Study], list[str]]:
    """Studies matching every filter (AND), and the filters this beacon does not know (not a term of the
    published data, see ``terms``), which match nothing."""
    public = _public(_counts(studies))
    wanted: list[tuple[str, str]] = []
    unknown: list[str] = []
    for f in filters:
        pair = parse(f)
        if pair is None or pair not in public:
            unknown.append(f)
        else:
            wanted.append(pair)
    if unknown:
        return [], unknown
    return [s for s in studies if all(v in _values(s, facet) for facet, v in wanted)], []


def facet_counts(studies: Sequence[Study], *, filtered: bool = False) -> dict[str, dict[str, int | str]]:
    """Studies per filtering term, by facet, rounded to 5. Below 5: "< 5" for a term of an unfiltered answer
    (public: it is among the filtering terms); left out for sex and age bands (cells that add up to the total)
    and for every cell of a filtered answer (a combination of terms, whose 0 must look like 1–4)."""
    out: dict[str, dict[str, int | str]] = {facet: {} for facet in FACETS}
    for (facet, v), n in sorted(_counts(studies).items(), key=lambda item: term_of(*item[0]).id):
        if n >= MIN_COUNT or not (filtered or facet in EXCLUSIVE):
            out[facet][term_of(facet, v).id] = shown(n)
    return out


# -- documents ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Beacon:
    """Who this beacon is (from the hub's settings)."""

    id: str
    name: str
    base_url: str  # the hub's
    organization: str
    environment: str = "prod"
    description: str = ""
    root: str = "/ga4gh/beacon/v2"
    created: str = "2026-12-01T00:00:00Z"
    extra_info: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.root

    def informational_meta(self, schemas: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
        return {"beaconId": self.id, "apiVersion": API_VERSION, "returnedSchemas": list(schemas)}

    def _organization(self) -> dict[str, Any]:
        return {"id": self.id.rsplit(".", 1)[0] or self.id, "name": self.organization,
                "welcomeUrl": self.base_url}

    def info(self) -> dict[str, Any]:
        return {"meta": self.informational_meta(), "response": {
            "id": self.id, "name": self.name, "apiVersion": API_VERSION, "environment": self.environment,
            "organization": self._organization(), "description": self.description, "version": API_VERSION,
            "welcomeUrl": self.base_url + "/catalog", "alternativeUrl": self.base_url,
            "createDateTime": self.created, "updateDateTime": self.created,
            "info": {"granularities": ["boolean", "count"], "minimumCount": MIN_COUNT, "countsRoundedTo": ROUND_TO,
                     **self.extra_info}}}

    def service_info(self) -> dict[str, Any]:
        """GA4GH service-info 1.0 with the Beacon service type."""
        return {"id": self.id, "name": self.name, "type": {"group": "org.ga4gh", "artifact": "beacon",
                                                           "version": API_VERSION},
                "description": self.description, "organization": {"name": self.organization, "url": self.base_url},
                "environment": self.environment, "version": API_VERSION, "createdAt": self.created,
                "updatedAt": self.created}

    def entry_types(self) -> dict[str, Any]:
        schema = {"id": "entryTypeDefinition", "name": "default schema"}
        return {
            DATASET: {"id": DATASET, "name": "Dataset", "partOfSpecification": "Beacon v2.0.0",
                      "description": "A published dataset of the hub's catalogue.",
                      "ontologyTermForThisType": {"id": "NCIT:C47824", "label": "Data set"},
                      "defaultSchema": {**schema, "id": SCHEMAS[DATASET], "name": "Beacon v2 dataset",
                                        "referenceToSchemaDefinition": "https://github.com/ga4gh-beacon/beacon-v2/"
                                        "blob/main/models/json/beacon-v2-default-model/datasets/"
                                        "defaultSchema.json", "schemaVersion": "v2.0.0"},
                      "aCollectionOf": [{"id": STUDY, "name": "Imaging studies"}],
                      "nonFilteredQueriesAllowed": True},
            STUDY: {"id": STUDY, "name": "Imaging study", "partOfSpecification": "Strongroom imaging model v1",
                    "description": "A DICOM study (its modalities and body parts) in a published dataset.",
                    "ontologyTermForThisType": {"id": "NCIT:C48288", "label": "Imaging study"},
                    "defaultSchema": {**schema, "id": SCHEMAS[STUDY], "name": "Strongroom imaging study",
                                      "referenceToSchemaDefinition": self.base_url + "/docs/federation.md",
                                      "schemaVersion": "v1.0.0"},
                    "nonFilteredQueriesAllowed": True},
        }

    def configuration(self) -> dict[str, Any]:
        return {"meta": self.informational_meta(), "response": {
            "$schema": "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/framework/json/"
                       "configuration/beaconConfigurationSchema.json",
            "maturityAttributes": {"productionStatus": "PROD" if self.environment == "prod" else "TEST"},
            "securityAttributes": {"defaultGranularity": "count", "securityLevels": ["PUBLIC"]},
            "entryTypes": self.entry_types()}}

    def map(self) -> dict[str, Any]:
        return {"meta": self.informational_meta(), "response": {
            "$schema": "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/framework/json/"
                       "configuration/beaconMapSchema.json",
            "endpointSets": {kind: {"entryType": kind, "rootUrl": f"{self.url}/{path}",
                                    "openAPIEndpointsDefinition": self.base_url + "/openapi.json"}
                             for kind, path in ENTRY_PATHS.items()}}}

    def entry_types_response(self) -> dict[str, Any]:
        return {"meta": self.informational_meta(), "response": {"entryTypes": self.entry_types()}}

    def filtering_terms(self, studies: Sequence[Study]) -> dict[str, Any]:
        return {"meta": self.informational_meta(), "response": {
            "filteringTerms": [{"type": "ontologyTerm", "id": t.id, "label": t.label,
                                "scopes": [DATASET, STUDY]} for t in terms(studies)],
            "resources": [
                {"id": "DCM", "name": "DICOM Controlled Terminology", "nameSpacePrefix": "DCM",
                 "url": "https://dicom.nema.org/medical/dicom/current/output/chtml/part16/chapter_D.html"},
                {"id": "SNOMED", "name": "SNOMED CT", "nameSpacePrefix": "SNOMED",
                 "iriPrefix": "http://snomed.info/id/"},
                {"id": "ICD10", "name": "ICD-10", "nameSpacePrefix": "ICD10",
                 "iriPrefix": "https://icd.who.int/browse10/2019/en#/"},
                {"id": "NCIT", "name": "NCI Thesaurus", "nameSpacePrefix": "NCIT",
                 "iriPrefix": "http://purl.obolibrary.org/obo/NCIT_"},
                {"id": "SRAGE", "name": "Age bands of ten years (Strongroom)", "nameSpacePrefix": "SRAGE"},
                {"id": "SRBODY", "name": "DICOM Body Part Examined without a SNOMED code (Strongroom)",
                 "nameSpacePrefix": "SRBODY"}]}}

    def query(self, entry_type: str, studies: Sequence[Study], filters: Sequence[str], *,
              requested: str = "count", test_mode: bool = False) -> dict[str, Any]:
        """A boolean or count response for ``entry_type`` over the published ``studies``."""
        hits, unknown = matching(studies, filters)
        n = len(hits) if entry_type == STUDY else len({s.dataset for s in hits})
        combined = len({parse(f) for f in filters}) > 1  # distinct terms: "DCM:CT,dcm:ct" is one
        small = 0 < n < MIN_COUNT or (combined and not unknown and n < MIN_COUNT)
        granularity = "boolean" if requested == "boolean" or small else "count"
        # a combination below 5 answers "no" whatever its count (0 included): a 0 would prove non-overlap
        summary: dict[str, Any] = {"exists": n >= MIN_COUNT if combined else n > 0}
        info: dict[str, Any] = {}
        if granularity == "count":
            summary["numTotalResults"] = shown(n)
        elif small and requested != "boolean":
            info["count"] = f"< {MIN_COUNT}"
        if requested != "boolean":
            info["counts"] = facet_counts(hits, filtered=bool(filters))
        if unknown:
            info["unknownFilters"] = list(unknown)
        schema = {"entityType": entry_type, "schema": SCHEMAS[entry_type]}
        return {"meta": {"beaconId": self.id, "apiVersion": API_VERSION, "returnedSchemas": [schema],
                         "returnedGranularity": granularity, "testMode": test_mode,
                         "receivedRequestSummary": {
                             "apiVersion": API_VERSION, "requestedSchemas": [schema],
                             "pagination": {"skip": 0, "limit": 0}, "requestedGranularity": requested,
                             "filters": list(filters), "testMode": test_mode}},
                "responseSummary": summary, "info": info}
