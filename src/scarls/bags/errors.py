"""Errors of the bag tools."""

from __future__ import annotations


class BagError(Exception):
    """A bag cannot be read or written; the message names the file and what to do."""
