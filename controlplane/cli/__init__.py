"""The ``ccdr`` command line: one module per command group."""
