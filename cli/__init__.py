"""The ``bulkscore`` command line."""
