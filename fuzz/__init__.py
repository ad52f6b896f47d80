"""Fuzz targets for edgeship's parsers of untrusted input (``make fuzz``; fuzz/README.md).

Deliberately empty: a target must import ``runtime`` inside atheris' instrumentation, so nothing
here may import it first.
"""
