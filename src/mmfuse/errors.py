"""The one error type that user mistakes are raised as.

A message names the input (file, row, key), the offending value and the fix, so the CLI can print
it without a traceback.
"""

from __future__ import annotations


class MmfuseError(Exception):
    """A problem the user can fix: bad config, bad file, bad request or bad bundle."""


class ConfigError(MmfuseError):
    """The configuration file or dict is invalid."""


class DataError(MmfuseError):
    """A table or a file it points at cannot be read or used."""


class BundleError(MmfuseError):
    """A saved model bundle is missing, incomplete or has been altered."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise an MmfuseError naming the extra to install.

    Example: ``soundfile = require("soundfile", "audio", "reading audio files")``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MmfuseError(f"{purpose} needs the package {module!r}: "
                          f"pip install 'mmfuse[{extra}]'") from None
