"""Steering one call's text generation from outside the model: the server's chat route.

A :class:`Control` names one generating head and carries, for the forward pass it wraps
(:func:`controlled`), what that call changes and who listens:

- ``options``: updates of the head's own options for this call only (``decoding``,
  ``temperature``, ``top_p``, ``seed``, the most new tokens), never the head's stored ones;
- ``on_step``: called after each generated token with the token of every row (output ids;
  ``None`` for a row that has ended) and answers the rows to end now (a client that left, or a
  stop string seen). The head ends them as if they had written their end token.

The control lives in a context variable, so it reaches the head through the model's forward
without a new argument on every layer, and a call on another thread is not touched.
Heads read it through :func:`options_for` and :func:`listener_for`; a causal LM hands its
tokens over through transformers' streamer protocol (:class:`TokenStreamer`, :class:`EndedRows`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

OnStep = Callable[[list[int | None]], set[int]]


@dataclass
class Control:
    """What one forward pass changes in the generation of ``head`` (see the module)."""

    head: Any
    options: dict[str, Any] = field(default_factory=dict)
    on_step: OnStep | None = None
    prompt_tokens: list[int] = field(default_factory=list)  # written by the head, per row
    output: str = ""  # the name of the head's output, for whoever reads what it wrote


_CONTROL: ContextVar[Control | None] = ContextVar("mmfuse_generation_control", default=None)


@contextlib.contextmanager
def controlled(control: Control | None) -> Iterator[Control | None]:
    """Apply ``control`` to the generation inside the block (on this thread)."""
    token = _CONTROL.set(control)
    try:
        yield control
    finally:
        _CONTROL.reset(token)


def control_for(head: Any) -> Control | None:
    """The control of ``head`` in this call, if any."""
    control = _CONTROL.get()
    return control if control is not None and control.head is head else None


def options_for(head: Any) -> Any:
    """``head.options`` with this call's updates."""
    control = control_for(head)
    if control is None or not control.options:
        return head.options
    return head.options.model_copy(update=control.options)


def listener_for(head: Any) -> OnStep | None:
    """Who listens to ``head``'s tokens in this call."""
    control = control_for(head)
    return control.on_step if control is not None else None


class TokenStreamer:
    """transformers' streamer protocol (``put`` / ``end``): hands each generated token to the
    call's listener in output ids (LM ids + ``shift``), and marks the rows it ends."""

    def __init__(self, listener: OnStep, ended: Any, end_id: int, shift: int) -> None:
        self.listener, self.ended, self.end_id, self.shift = listener, ended, end_id, shift
        self.finished = [False] * ended.shape[0]
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call holds the prompt's ids (none: embeddings)
            self.prompt_seen = True
            return
        tokens = []
        for row, token in enumerate(value.view(-1).tolist()):
            if self.finished[row] or token == self.end_id:
                self.finished[row] = True
                tokens.append(None)
            else:
                tokens.append(token + self.shift)
        for row in self.listener(tokens):
            self.ended[row] = True
            self.finished[row] = True

    def end(self) -> None:
        pass


class EndedRows:
    """A stopping criterion: rows the listener ended stop (one step after it said so)."""

    def __init__(self, ended: Any) -> None:
        self.ended = ended

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        return self.ended.clone()
