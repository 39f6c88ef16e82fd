"""The national deployment self-test (``dicom-gateway selftest``): the gateway exercised from outside, as a
modality, a viewer, a HIS and the registry's consumers would, over its own protocols only (DICOM, HTTP, MLLP,
XDS), with a synthetic study under 900-series test identities, and written up as a report an organisation can
attach to its deployment report."""
