"""XDS.b / XDS-I.b: SOAP 1.2 wire layer, schema and metadata validation, and a registry/repository simulator."""
