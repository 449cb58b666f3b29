"""The GA4GH Beacon v2 of the published imaging data: every response valid against the Beacon v2 framework
schemas (tests/support/beacon-v2-framework), counts of studies and datasets by filtering terms, counts below 5
never given as numbers, and nothing of an unpublished dataset (or an older version) visible."""

from __future__ import annotations

import pytest
from sqlalchemy import select

import federation_support
from strongroom.catalog.models import CatalogEntry
from strongroom.db import transaction
from support.beacon_schema import validate

B = "/ga4gh/beacon/v2"


def seed(hub) -> dict[str, str]:
    ids = federation_support.seed(hub, {"beaconct": "lung-ct", "brain": "brain-mr"}, {"secret": "knee"},
                                  keywords={"beaconct": ["lung cancer", "ICD10:C34"]})
    return {"ct": ids["beaconct"], "brain": ids["brain"], "secret": ids["secret"]}


def get(client, path: str, schema: str, **params):
    r = client.get(B + path, params=params)
    assert r.status_code == 200, r.text
    doc = r.json()
    validate(doc, schema)
    return doc


@pytest.fixture
def seeded(hub):
    return seed(hub)


def test_framework_endpoints_are_valid_beacon_v2(client, seeded):
    info = get(client, "", "beaconInfoResponse")
    assert get(client, "/info", "beaconInfoResponse") == info
    assert info["response"]["apiVersion"] == "v2.0.0" and info["meta"]["beaconId"] == "strongroom.127.0.0.1"
    validate(client.get(B + "/service-info").json(), "ga4gh-service-info-1-0-0-schema")
    config = get(client, "/configuration", "beaconConfigurationResponse")
    assert set(config["response"]["entryTypes"]) == {"dataset", "imagingStudy"}
    assert config["response"]["securityAttributes"]["defaultGranularity"] == "count"
    beacon_map = get(client, "/map", "beaconMapResponse")
    assert beacon_map["response"]["endpointSets"]["imagingStudy"]["rootUrl"].endswith(B + "/imaging_studies")
    assert set(get(client, "/entry_types", "beaconEntryTypesResponse")["response"]["entryTypes"]) == {
        "dataset", "imagingStudy"}


def test_filtering_terms_are_those_of_published_data_only(client, seeded):
    terms = {t["id"]: t["label"] for t in get(client, "/filtering_terms", "beaconFilteringTermsResponse")
             ["response"]["filteringTerms"]}
    assert terms == {"DCM:CT": "Computed Tomography", "DCM:MR": "Magnetic Resonance",
                     "DCM:PT": "Positron emission tomography", "SNOMED:51185008": "Thorax",
                     "SNOMED:12738006": "Brain", "ICD10:C34": "ICD-10 C34"}
    # the unpublished knee MG study and the CT liver study of an older version are nowhere
    assert "DCM:MG" not in terms and "SNOMED:72696002" not in terms and "SNOMED:10200004" not in terms


def test_counts_with_filters_and_small_counts_suppressed(client, seeded):
    everything = get(client, "/imaging_studies", "beaconCountResponse")
    assert everything["responseSummary"] == {"exists": True, "numTotalResults": 5}  # 7, rounded to 5
    assert everything["meta"]["returnedGranularity"] == "count"
    counts = everything["info"]["counts"]
    assert counts["modality"] == {"DCM:CT": 5, "DCM:MR": "< 5", "DCM:PT": "< 5"}
    assert counts["bodyPart"] == {"SNOMED:12738006": "< 5", "SNOMED:51185008": 5}
    assert counts["disease"] == {"ICD10:C34": 5} and counts["sex"] == {} and counts["ageBand"] == {}

    ct = get(client, "/imaging_studies", "beaconCountResponse", filters="DCM:CT,SNOMED:51185008")
    assert ct["responseSummary"] == {"exists": True, "numTotalResults": 5}
    assert ct["meta"]["receivedRequestSummary"]["filters"] == ["DCM:CT", "SNOMED:51185008"]
    assert get(client, "/imaging_studies", "beaconCountResponse", filters="icd10:c34")["responseSummary"][
        "numTotalResults"] == 5  # CURIEs are matched without regard to case

    # one MR study: never "1" — the answer drops to boolean and says "< 5"
    mr = get(client, "/imaging_studies", "beaconBooleanResponse", filters="DCM:MR")
    assert mr["responseSummary"] == {"exists": True} and mr["meta"]["returnedGranularity"] == "boolean"
    assert mr["info"]["count"] == "< 5"
    assert {v for facet in mr["info"]["counts"].values() for v in facet.values()} == set()  # cells below 5 left out
    # two datasets: "< 5" as well
    ds = get(client, "/datasets", "beaconBooleanResponse")
    assert ds["responseSummary"] == {"exists": True} and ds["info"]["count"] == "< 5"

    none = get(client, "/imaging_studies", "beaconBooleanResponse", filters="DCM:MR,ICD10:C34")
    assert none["responseSummary"] == {"exists": False} and none["info"]["count"] == "< 5"  # 0 looks like 1-4
    boolean = get(client, "/imaging_studies", "beaconBooleanResponse", filters="DCM:CT",
                  requestedGranularity="boolean")
    assert boolean["responseSummary"] == {"exists": True} and "counts" not in boolean["info"]
    record = get(client, "/imaging_studies", "beaconCountResponse", requestedGranularity="record")
    assert record["meta"]["returnedGranularity"] == "count"  # never record level

    posted = client.post(B + "/imaging_studies", json={"meta": {"apiVersion": "v2.0.0"}, "query": {
        "filters": [{"id": "DCM:CT"}], "requestedGranularity": "count"}})
    assert posted.status_code == 200
    validate(posted.json(), "beaconCountResponse")
    assert posted.json()["responseSummary"] == ct["responseSummary"]
    validate({"meta": {"apiVersion": "v2.0.0"}, "query": {"filters": [{"id": "DCM:CT"}],
                                                          "requestedGranularity": "count"}},
             "requests/beaconRequestBody.json")


def test_unpublished_data_is_invisible(client, hub, seeded):
    knee = get(client, "/imaging_studies", "beaconCountResponse", filters="DCM:MG")
    assert knee["responseSummary"] == {"exists": False, "numTotalResults": 0}
    assert knee["info"]["unknownFilters"] == ["DCM:MG"]
    with transaction(hub.sessions) as s:  # withdraw the CT dataset: its six studies are gone at once
        s.scalar(select(CatalogEntry).where(CatalogEntry.dataset_id == seeded["ct"])).published = False
    gone = get(client, "/imaging_studies", "beaconBooleanResponse")
    assert gone["responseSummary"] == {"exists": True} and gone["info"]["count"] == "< 5"
    assert "DCM:CT" not in str(get(client, "/filtering_terms", "beaconFilteringTermsResponse"))


def test_the_beacon_is_in_openapi_and_public(app):
    paths = app.openapi()["paths"]
    for path in ("", "/info", "/service-info", "/configuration", "/map", "/entry_types", "/filtering_terms",
                 "/datasets", "/imaging_studies"):
        assert B + path in paths and paths[B + path]["get"]["security"] == []
