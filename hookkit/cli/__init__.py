"""Command-line interface (``hookkit ...``)."""
