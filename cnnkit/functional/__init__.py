"""The functional API: one module per op family, re-exported here."""

from .lrn import local_response_norm  # noqa: F401
