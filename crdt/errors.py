"""Errors raised by the replicated memory core."""

from __future__ import annotations


class MemmeshError(Exception):
    """Base class of every error the memory core raises on purpose."""


class InvalidItemError(ValueError, MemmeshError):
    """A memory item (or a field of one) failed validation; nothing was written."""


class UnknownTierError(InvalidItemError):
    """The tier name is not one of the configured tiers."""


class ItemNotFoundError(KeyError, MemmeshError):
    """No live item has this id."""

    def __str__(self) -> str:
        """Return the message without KeyError's quoting."""
        return str(self.args[0]) if self.args else "item not found"


class ClockDriftError(ValueError, MemmeshError):
    """A remote timestamp lies further in the future than the configured bound."""


class CorruptRecordError(ValueError, MemmeshError):
    """A stored or received record could not be decoded."""
