"""What a Python shop would write: pynetdicom's threaded storage SCP writing each instance to a file."""

from __future__ import annotations

import sys
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def main() -> None:
    port, directory = int(sys.argv[1]), Path(sys.argv[2])
    directory.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        with (directory / event.request.AffectedSOPInstanceUID).open("wb") as fp:
            fp.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_associations = 64
    ae.maximum_pdu_size = 0  # no limit: the largest PDUs the sender offers
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)], block=True)


if __name__ == "__main__":
    main()
