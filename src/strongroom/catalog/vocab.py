"""Controlled vocabularies of the catalogue (pure data): GA4GH DUO codes and DICOM modalities."""

from __future__ import annotations

# GA4GH Data Use Ontology (DUO) terms a data owner can attach to a dataset: code → (short, label, meaning).
DUO: dict[str, tuple[str, str, str]] = {
    # permissions: a dataset carries exactly one
    "DUO:0000004": ("NRES", "No restriction", "No restriction on use."),
    "DUO:0000042": ("GRU", "General research use", "Use is allowed for general research use for any research "
                    "purpose."),
    "DUO:0000006": ("HMB", "Health or medical or biomedical research",
                    "Use is allowed for health/medical/biomedical purposes; does not include the study of "
                    "population origins or ancestry."),
    "DUO:0000007": ("DS", "Disease specific research", "Use is allowed provided it is related to the specified "
                    "disease."),
    "DUO:0000011": ("POA", "Population origins or ancestry research only",
                    "Use is limited to the study of population origins or ancestry."),
    "DUO:0000043": ("CC", "Clinical care use", "Use is allowed for clinical use and care."),
    # modifiers
    "DUO:0000015": ("NMDS", "No general methods research",
                    "Use for methods development research (e.g. development of software or algorithms, "
                    "including training AI models) is not allowed."),
    "DUO:0000016": ("GSO", "Genetic studies only", "Use is limited to genetic studies only."),
    "DUO:0000018": ("NPUNCU", "Not-for-profit, non-commercial use only",
                    "Use is limited to not-for-profit organisations and not-for-profit use, non-commercial use."),
    "DUO:0000019": ("PUB", "Publication required", "Requestors must agree to make results of studies using "
                    "the data available to the larger scientific community."),
    "DUO:0000020": ("COL", "Collaboration required", "Requestors must agree to collaboration with the "
                    "primary study investigator(s)."),
    "DUO:0000021": ("IRB", "Ethics approval required", "Requestors must provide documentation of local "
                    "IRB/ERB approval."),
    "DUO:0000022": ("GS", "Geographical restriction", "Use is limited to within a specific geographic region."),
    "DUO:0000024": ("MOR", "Publication moratorium", "Requestors must agree not to publish results of studies "
                    "until a specific date."),
    "DUO:0000025": ("TS", "Time limit on use", "Use is approved for a specific number of months."),
    "DUO:0000026": ("US", "User specific restriction", "Use is limited to use by approved users."),
    "DUO:0000027": ("PS", "Project specific restriction", "Use is limited to use within an approved project."),
    "DUO:0000028": ("IS", "Institution specific restriction", "Use is limited to use within an approved "
                    "institution."),
    "DUO:0000029": ("RTN", "Return to database or resource", "Requestors must return derived/enriched data "
                    "to the database/resource."),
    "DUO:0000044": ("NPOA", "Population origins or ancestry research prohibited",
                    "Use for the purposes of population, origin, or ancestry research is prohibited."),
    "DUO:0000045": ("NPU", "Not-for-profit organisation use only", "Use is limited to not-for-profit "
                    "organisations."),
    "DUO:0000046": ("NCU", "Non-commercial use only", "Use is limited to non-commercial use."),
}
DUO_PERMISSIONS = ("DUO:0000004", "DUO:0000042", "DUO:0000006", "DUO:0000007", "DUO:0000011", "DUO:0000043")
NO_METHODS = "DUO:0000015"  # forbids methods development: most AI work


def duo_url(code: str) -> str:
    return "http://purl.obolibrary.org/obo/" + code.replace(":", "_")


# DICOM modality codes (0008,0060) used for imaging datasets, with readable names.
MODALITIES: dict[str, str] = {
    "CT": "Computed tomography",
    "MR": "Magnetic resonance",
    "PT": "Positron emission tomography",
    "NM": "Nuclear medicine",
    "CR": "Computed radiography",
    "DX": "Digital radiography",
    "MG": "Mammography",
    "US": "Ultrasound",
    "XA": "X-ray angiography",
    "RF": "Radio fluoroscopy",
    "OCT": "Optical coherence tomography",
    "OP": "Ophthalmic photography",
    "SM": "Slide microscopy (whole-slide imaging)",
    "ECG": "Electrocardiography",
    "SEG": "Segmentation",
    "OT": "Other",
}

# Facets of the catalogue search: key → (heading, value labels or None for free values).
ACCESS_LABELS = {"hub": "Apply through this hub", "external": "Apply to the data owner"}
USE_LABELS = {"methods-allowed": "Methods / AI development allowed",
              "no-methods": "No methods development (DUO:0000015)"}
