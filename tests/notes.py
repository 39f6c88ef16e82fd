"""Rejection notes made by dcmtk's ``dump2dcm`` from a text dump: a note built without pydicom or the gateway's code,
as a PACS's own tooling would."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom.uid import generate_uid

from tests.conftest import dcmtk


def dcmtk_note(directory: Path, code: str, meaning: str, instances: Sequence[tuple[str, str]], study: str,
               series: str, *, patient_id: str, issuer: str = "", patient_name: str = "Test^Patient") -> Path:
    """A Part 10 rejection note titled ``code`` for ``instances`` ((SOP Class, SOP Instance) of one series)."""
    references = "".join(f"""
          (fffe,e000) na (Item with explicit length #=2)
            (0008,1150) UI [{sop_class}]
            (0008,1155) UI [{sop}]
          (fffe,e00d) na (ItemDelimitationItem for re-encoding)""" for sop_class, sop in instances)
    content = "".join(f"""
  (fffe,e000) na (Item with explicit length #=3)
    (0040,a010) CS [CONTAINS]
    (0040,a040) CS [IMAGE]
    (0008,1199) SQ (Sequence with explicit length #=1)
      (fffe,e000) na (Item with explicit length #=2)
        (0008,1150) UI [{sop_class}]
        (0008,1155) UI [{sop}]
      (fffe,e00d) na (ItemDelimitationItem for re-encoding)
    (fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
  (fffe,e00d) na (ItemDelimitationItem for re-encoding)""" for sop_class, sop in instances)
    dump = directory / f"note-{code}-{generate_uid()}.dump"
    dump.write_text(f"""
(0008,0016) UI =KeyObjectSelectionDocumentStorage
(0008,0018) UI [{generate_uid()}]
(0008,0020) DA [20261201]
(0008,0023) DA [20261201]
(0008,0030) TM [101500]
(0008,0033) TM [101500]
(0008,0050) SH [ACC-1]
(0008,0060) CS [KO]
(0008,0070) LO [dcmtk]
(0008,0090) PN []
(0008,1111) SQ (Sequence with explicit length #=0)
(fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
(0010,0010) PN [{patient_name}]
(0010,0020) LO [{patient_id}]
{f"(0010,0021) LO [{issuer}]" if issuer else ""}
(0010,0030) DA []
(0010,0040) CS []
(0020,000d) UI [{study}]
(0020,000e) UI [{generate_uid()}]
(0020,0010) SH []
(0020,0011) IS [99]
(0020,0013) IS [1]
(0040,a040) CS [CONTAINER]
(0040,a043) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=3)
    (0008,0100) SH [{code}]
    (0008,0102) SH [DCM]
    (0008,0104) LO [{meaning}]
  (fffe,e00d) na (ItemDelimitationItem for re-encoding)
(fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
(0040,a050) CS [SEPARATE]
(0040,a375) SQ (Sequence with explicit length #=1)
  (fffe,e000) na (Item with explicit length #=2)
    (0008,1115) SQ (Sequence with explicit length #=1)
      (fffe,e000) na (Item with explicit length #=2)
        (0008,1199) SQ (Sequence with explicit length #={len(instances)}){references}
        (fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
        (0020,000e) UI [{series}]
      (fffe,e00d) na (ItemDelimitationItem for re-encoding)
    (fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
    (0020,000d) UI [{study}]
  (fffe,e00d) na (ItemDelimitationItem for re-encoding)
(fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
(0040,a730) SQ (Sequence with explicit length #={len(instances)}){content}
(fffe,e0dd) na (SequenceDelimitationItem for re-encod.)
""")
    path = directory / f"{dump.stem}.dcm"
    subprocess.run([dcmtk("dump2dcm"), "--write-file", str(dump), str(path)], check=True, capture_output=True)
    return path
