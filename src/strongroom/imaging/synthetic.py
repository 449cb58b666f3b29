"""Synthetic, identified CT instances for tests, benchmarks and demos (no real patient data).

Each instance is a 16-bit CT Image Storage object with the identifying material a real one carries:
names, IDs, dates and times, institution and device identity, free-text descriptions that repeat the
patient's name, nested sequences with UIDs and names, and private blocks (an unsafe one that repeats the
patient's name and ID, and a GEMS_ACQU_01 block whose Table Speed is in the safe private table).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

_ROOT = "1.2.826.0.1.3680043.10.1234."  # an example root for synthetic "scanner" UIDs
FIRST = ["ALICE", "BRUNO", "CHIARA", "DMITRI", "ELIF", "FATOU", "GORAN", "HANNA", "IKER", "JOANNA"]
LAST = ["LINDQVIST", "OKONKWO", "FERREIRA", "NAKAMURA", "KOWALSKA", "BERTRAND", "HALVORSEN", "MORETTI"]


@dataclass(frozen=True)
class SyntheticPatient:
    index: int

    @property
    def patient_id(self) -> str:
        return f"MRN{7340000 + self.index * 7919}"

    @property
    def name(self) -> str:
        return f"{LAST[self.index % len(LAST)]}{self.index}^{FIRST[self.index % len(FIRST)]}"

    @property
    def birth_date(self) -> str:
        return f"{1940 + self.index % 50}{1 + self.index % 12:02d}{1 + self.index % 28:02d}"


def _uid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return _ROOT + str(int.from_bytes(digest[:12], "big"))


def study_date(patient: int, study: int) -> str:
    """Studies of one patient are 37 days apart, starting from a per-patient day in 2021."""
    day = _dt.date(2021, 1, 4) + _dt.timedelta(days=patient * 11 + study * 37)
    return day.strftime("%Y%m%d")


def make_ct(patient: int, study: int, series: int, instance: int, *, rows: int = 512, columns: int = 512,
            seed: int = 0, manufacturer: str = "GE MEDICAL SYSTEMS", model: str = "Revolution CT",
            pixel_bytes: bytes | None = None) -> bytes:
    """One identified CT instance, encoded as a Part 10 file (Explicit VR Little Endian)."""
    p = SyntheticPatient(patient)
    date = study_date(patient, study)
    acq_time = f"{8 + series:02d}{(instance * 7) % 60:02d}{instance % 60:02d}.{instance:06d}"
    study_uid = _uid("study", patient, study)
    series_uid = _uid("series", patient, study, series)
    sop_uid = _uid("sop", patient, study, series, instance)
    for_uid = _uid("for", patient, study)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_ROOT + "1")
    meta.SourceApplicationEntityTitle = "CT_SCANNER_3"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = acq_time
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = "080000"
    ds.SeriesTime = f"{8 + series:02d}0000"
    ds.AcquisitionTime = ds.ContentTime = acq_time
    ds.AccessionNumber = f"ACC{patient:03d}{study:02d}77"
    ds.Modality = "CT"
    ds.Manufacturer = manufacturer
    ds.InstitutionName = "St. Example University Hospital"
    ds.InstitutionAddress = "12 Harbour Road, Exampletown"
    ds.ReferringPhysicianName = "WALLENBERG^KARIN^DR"
    ds.StationName = "CTROOM3-EXH"
    ds.StudyDescription = f"CT THORAX for {p.name.replace('^', ' ')}"
    ds.ProcedureCodeSequence = Sequence([_code("ZZ4711", "99EXH", "CT thorax with contrast")])
    ds.SeriesDescription = f"Axial 1.25mm series {series}"
    ds.InstitutionalDepartmentName = "Radiology North"
    ds.PhysiciansOfRecord = "OSTROWSKI^PAWEL"
    ds.OperatorsName = "TECH^TERESA"
    ds.ManufacturerModelName = model
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = _uid("sop", patient, study, series, max(1, instance - 1))
    ds.ReferencedImageSequence = Sequence([ref])
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = "EXAMPLE-HOSP"
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = "F" if patient % 2 else "M"
    other = Dataset()
    other.PatientID = f"NHS{9000000000 + patient * 37}"
    other.IssuerOfPatientID = "NHS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientAge = f"{(2021 - 1940 - patient % 50):03d}Y"
    ds.PatientWeight = "71.5"
    ds.PatientAddress = "4 Elm Street, Exampletown"
    ds.AdditionalPatientHistory = f"Follow-up of {p.name.replace('^', ' ')}, MRN {p.patient_id}"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.DeviceSerialNumber = "SN-448812"
    ds.SoftwareVersions = "REV 5.1"
    ds.ProtocolName = f"THORAX {p.name.split('^')[0]}"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"S{patient:03d}{study}"
    ds.SeriesNumber = series
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * instance]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = -1.25 * instance
    ds.ImageComments = f"Reviewed for {p.name.replace('^', ' ')} on {date}"
    req = Dataset()
    req.RequestedProcedureID = f"RP{patient}{study}"
    req.AccessionNumber = ds.AccessionNumber
    req.ScheduledProcedureStepID = f"SPS{patient}{study}"
    ds.RequestAttributesSequence = Sequence([req])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    # private: an unsafe block repeating identifiers, and a safe-listed GEMS_ACQU_01 element
    ds.private_block(0x0019, "GEMS_ACQU_01", create=True).add_new(0x23, "DS", "39.37")
    ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x24, "DS", "3.5")  # Mid Scan Time: safe too
    ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x10, "LO", f"{p.patient_id} {date}")  # not safe-listed
    unsafe = ds.private_block(0x0029, "EXAMPLE HOSPITAL PACS 1.0", create=True)
    unsafe.add_new(0x01, "LO", p.patient_id)
    unsafe.add_new(0x02, "PN", p.name)
    item = Dataset()
    item.add_new(0x00291010, "LO", "EXAMPLE HOSPITAL PACS 1.0")
    item.add_new(0x00291011, "LT", f"worklist entry for {p.name}")
    unsafe.add_new(0x03, "SQ", Sequence([item]))
    if pixel_bytes is None:
        rng = random.Random(hash((seed, patient, study, series, instance)) & 0xFFFFFFFF)
        pixel_bytes = rng.randbytes(rows * columns * 2)
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OW"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def corpus(patients: int, studies: int, series: int, instances: int, **kw: object) -> Iterator[
        tuple[tuple[int, int, int, int], bytes]]:
    """Every (patient, study, series, instance) of a corpus, with its encoded file."""
    for p in range(patients):
        for st in range(studies):
            for se in range(1, series + 1):
                for i in range(1, instances + 1):
                    yield (p, st, se, i), make_ct(p, st, se, i, **kw)  # type: ignore[arg-type]
