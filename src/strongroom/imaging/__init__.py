"""Medical imaging: DICOM de-identification engine (pure), verification, and (later) the DICOM receiver.

``deid``, ``deid_table`` and ``verify`` are pure engines: they import pydicom and the standard library only
(no web or database code), so they can be used as libraries and benchmarked alone.
"""
