"""Errors an artist can read.

Every failure sd_core reports on purpose is an ``SDCoreError`` whose message is one plain sentence
(or two) saying what is wrong and what to do about it. The add-on shows ``str(error)`` as a Blender
report and the CLI prints it as one line; neither ever shows a traceback for these.
"""

from __future__ import annotations


class SDCoreError(Exception):
    """Base class: the message is meant for the artist, not the developer."""


class ValidationError(SDCoreError, ValueError):
    """The request cannot run as given (bad size, zero steps, empty mask...)."""


class ModelError(SDCoreError):
    """A model is missing, of the wrong kind, corrupt, unsafe, or needs the network."""


class UnsafeModelError(ModelError):
    """A pickled checkpoint was refused because unsafe loading was not allowed."""


class CancelledError(SDCoreError):
    """The caller cancelled; no image was decoded."""


class OutOfMemoryError(SDCoreError):
    """The device ran out of memory; the message suggests the low-VRAM options."""
