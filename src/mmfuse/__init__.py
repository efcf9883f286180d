"""mmfuse: build, train, evaluate and deploy multimodal deep-learning models.

The top-level import stays light: torch and the components load on first use of ``Model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Model", "load_config", "MmfuseError", "__version__"]

from .errors import MmfuseError

if TYPE_CHECKING:
    from .api import Model
    from .config import load_config


def __getattr__(name: str) -> Any:
    if name == "Model":
        from .api import Model

        return Model
    if name == "load_config":
        from .config import load_config

        return load_config
    raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
