"""Security helpers that are not tied to one node: DDS Security support of the installed
middleware (:mod:`scarls.security.dds`)."""
