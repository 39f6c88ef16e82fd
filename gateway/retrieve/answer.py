"""A match as the requestor sees it: a C-FIND identifier, or a QIDO-RS result in the DICOM JSON model, built
from the index's values for the keys asked (PS3.4 C.4.1.1.3.2: the keys of the request, each with its value or
zero-length) and nothing else; text as UTF-8 (ISO_IR 192), whatever the instances' own character sets were."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.core.query import Level, Query


def identifier(query: Query, values: Mapping[str, Any], keys: Iterable[str], ae_title: str,
               level: Level | None = None) -> Dataset:
    """The data set of one match: ``keys`` with their values (zero-length when the index has none), the
    level, the character set, and the Retrieve AE Title and availability when asked for."""
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.QueryRetrieveLevel = str(level or query.level)
    if query.retrieve_ae_title:
        dataset.RetrieveAETitle = ae_title
    if query.instance_availability:
        dataset.InstanceAvailability = "ONLINE"
    for keyword in keys:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        value = values.get(keyword)
        if vr == "SQ":
            dataset.add_new(tag, vr, DicomSequence())
        elif value is None or value == "" or value == []:
            dataset.add_new(tag, vr, None)
        elif vr == "IS":
            dataset.add_new(tag, vr, str(value))
        else:
            dataset.add_new(tag, vr, value)
    return dataset
