"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile + options.

A pure engine (pydicom and the standard library only). It works on the encoded bytes: the object is
parsed into element *positions* (no value decoding), each element gets the action that the profile
compiled for its tag, and the output is spliced together from slices of the input (kept elements,
pixel data: copied byte-for-byte, never decoded) and freshly encoded replacements. pydicom is used for
its data dictionary and character-set codecs, and to convert ``Dataset`` inputs/outputs.

Policies (the conformance statement of this engine):

* **Table**: PS3.15 Table E.1-1 edition 2024b (``imaging/deid_table.py``, generated). For each attribute the enabled
  options' cells replace the Basic Profile cell; when two enabled options disagree, the stricter wins
  (C over K), e.g. a calibration date under Retain Device Identity + Modified Dates is shifted.
* **Composite codes** need the attribute's Type in the instance's IOD, which the machine-readable tables
  here do not carry. We therefore assume the strictest requirement (Type 1) and resolve to the action that
  can never break conformance while keeping no original value: Z/D, X/D, X/Z/D -> D (dummy), X/Z -> Z
  (emptied), X/Z/U* -> U* (sequence kept, every UID inside replaced, everything else inside processed).
* **Actions**: X removes; Z writes a zero-length value (an empty sequence for SQ); D writes a VR-valid
  dummy (``ANONYMIZED``, ``19000101``, ``0``...; a UI dummy is a keyed UID; Patient ID gets the keyed
  pseudonym); U replaces each UID by ``2.25.<HMAC>`` (well-known ``1.2.840.10008.*`` UIDs are kept);
  K keeps (sequences are kept *and cleaned*: recursed with the same profile); C cleans: dates shifted per
  patient (Modified Dates), times kept (the shift is whole days, so times stay consistent with their dates),
  AE titles replaced by keyed pseudonyms, free text with identifiers masked (``***``: names, IDs and other
  identifying values of the same instance, dates, long digit runs, e-mail addresses), coded strings kept,
  binary values (OB timestamps, maker notes) removed. A D sequence (e.g. Content Sequence without Clean
  Structured Content) keeps its structure with every free-text value replaced by a dummy (code triplets of
  standard coding schemes survive, local ``99*``/``L`` ones do not); a C sequence keeps its structure with
  free text cleaned.
* Patient's Name (Z) gets the patient pseudonym as its "non-zero length dummy value".
* **Unlisted attributes**: standard attributes not in Table E.1-1 are kept (the standard's premise),
  except: UI values are replaced (except SOP class / transfer syntax / coding-scheme / context UIDs and all
  well-known UIDs), PN values are emptied, DA/DT values follow the date option (emptied, shifted or kept),
  Encrypted Attributes Sequence and Private Data Element Characteristics Sequence are removed; attributes not
  in the data dictionary, group lengths, command-group elements and elements inside a file's dataset from
  group 0002 are removed. Curves (50xx) and overlays (60xx) are removed as whole groups (Overlay Data is X,
  and an overlay without its data is invalid; Clean Graphics has no bitmap cleaner, so it removes them too).
* **Private attributes** are removed, unless Retain Safe Private is on and (private creator, group,
  element-within-block) is in Table E.3.10-1 (2023b) or the profile's ``extra_safe_private``; never by raw
  tag position. Retained private UIDs are replaced like any UID; retained private sequences are recursed.
* **Pseudonyms** (``Pseudonymizer``): HMAC-SHA256 under a per-project secret, domain-separated per use.
  Patient ID -> ``<prefix><20 base32 chars>``; UIDs -> ``2.25.<int of a v8 UUID from the HMAC>``; date
  shift -> ``-(1 + HMAC mod max_shift_days)`` days (default 1..3650 days into the past), keyed on the original
  Patient ID, so every study of a patient moves by the same amount and intervals survive. Without a
  Patient ID the key falls back to name+birth date, then the Study Instance UID.
* **Markers**: Patient Identity Removed = YES; De-identification Method (text) and Code Sequence (CID 7050:
  113100 plus one code per option used; 113101 only when a pixel rule blanked this instance); Longitudinal
  Temporal Information Modified = REMOVED / UNMODIFIED / MODIFIED; Burned In Annotation = NO only when a pixel
  rule was applied (otherwise left as received: the risk check decides). File meta is rebuilt: zero preamble,
  Media Storage SOP Instance UID = the new SOP Instance UID, our implementation UID; the source AE title
  and private meta elements are dropped. The transfer syntax is unchanged.
* **Pixel rules** blank rectangles (all frames, all samples) in native pixel data of instances whose
  manufacturer/model/modality/size match. Encapsulated pixel data cannot be blanked without re-encoding:
  that is reported as a rule miss (``DeidResult.misses``) so the instance goes to quarantine.
* The **action log** records (attribute path, keyword, rule, action), never a value.

The package, one idea a module: ``profile`` (DeidProfile, PixelRule, the options), ``pseudonyms``
(Pseudonymizer), ``result`` (DeidResult, LogEntry, DeidError), ``plan`` (the profile compiled to tag ->
action), ``encoding`` (byte-level parse/encode), ``dates`` and ``text`` (the cleaners), ``pixels`` (pixel
rules), ``run`` (the walk that emits the output) and ``engine`` (``deidentify``, ``deidentify_file``).
"""

from __future__ import annotations

from .engine import deidentify, deidentify_file
from .plan import TEXT_KEEP_LIST
from .profile import CID_7050, OPTIONS, DeidProfile, PixelRule
from .pseudonyms import Pseudonymizer
from .result import DeidError, DeidResult, LogEntry

__all__ = [
    "CID_7050",
    "OPTIONS",
    "TEXT_KEEP_LIST",
    "DeidError",
    "DeidProfile",
    "DeidResult",
    "LogEntry",
    "PixelRule",
    "Pseudonymizer",
    "deidentify",
    "deidentify_file",
]
