"""``python -m mmfuse``: the same as the ``mmfuse`` command (torchrun starts it this way)."""

from .cli import main

main()
