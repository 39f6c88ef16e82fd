"""Reading the start of a data set while the rest is still arriving."""

from __future__ import annotations

import io
import warnings

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA = 0x7FE00010


def read_prefix(prefix: bytes, transfer_syntax: str, stop_before: int, complete: bool) -> tuple[Dataset, int] | None:
    """The top-level elements before tag ``stop_before`` and where they end in ``prefix``; None while more
    bytes are needed to reach it.

    With ``complete`` the prefix is all there is, and whatever parses is returned. Raises only then.
    pydicom converts values lazily, on access: callers read the values they need under
    ``warnings.catch_warnings`` too, since pydicom's warnings may quote patient data.
    """
    stream = io.BytesIO(prefix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = read_dataset(
                stream,
                is_implicit_VR=transfer_syntax == IMPLICIT_LITTLE,
                is_little_endian=transfer_syntax != EXPLICIT_BIG,
                stop_when=lambda tag, vr, length: tag >= stop_before,
            )
            if stream.tell() >= len(prefix) and not complete:
                return None
            return dataset, stream.tell()
    except Exception:
        if not complete:
            return None
        raise


def encode(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Top-level elements encoded as the transfer syntax says (not for deflated data sets)."""
    out = DicomBytesIO()
    out.is_little_endian = transfer_syntax != EXPLICIT_BIG
    out.is_implicit_VR = transfer_syntax == IMPLICIT_LITTLE
    write_dataset(out, dataset)
    return out.getvalue()
