"""HL7 v2 ADT over MLLP: the patient identity a district's HIS/RIS sends, received, checked and put on the bus
(``listener``), in the message's own character set (``message``), as patient changes (``adt``)."""
