"""The prompt a causal LM reads: a template with ``{input}`` places, inside the LM's chat
template.

``prompt:`` is a string in which ``{name}`` stands for the input ``name`` (``{{`` and ``}}``
are literal braces). The default places the media first, then the text inputs, one per line:
``"{image}\\n{question}"``. The template becomes the user's message of the model's chat
template (its own system prompt included) followed by the assistant's turn, so an instruct
model reads the row as it read its training conversations; ``chat_template: false`` (or a
model without one) uses the filled template as the whole prompt.

What the LM reads is then a list of *pieces*: literal text (tokenised once, with the LM's own
tokenizer) and places, filled per row with a text input's tokens (through the same tokenizer)
or an input's projected tokens. Each literal piece is tokenised on its own; the places sit
next to newlines and special tokens, where a BPE tokenizer splits anyway, so the ids equal
those of the whole prompt tokenised at once (tested on plain prompts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PLACE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SENTINEL = "\uE000{}\uE001"  # private-use characters: never in a chat template
_SPLIT = re.compile("\uE000([A-Za-z_][A-Za-z0-9_]*)\uE001")


def default_prompt(media: list[str], texts: list[str]) -> str:
    """The media first, then the text inputs in order, one per line."""
    return "\n".join(f"{{{name}}}" for name in [*media, *texts])


def _escaped(template: str) -> str:
    """``{{`` and ``}}`` (literal braces) out of the way of the places."""
    return template.replace("{{", "\uE002").replace("}}", "\uE003")


def places(template: str) -> list[str]:
    """The input names a template places, in order."""
    return _PLACE.findall(_escaped(template))


def check_prompt(template: str, inputs: list[str]) -> None:
    """Every place names an input, and every input has one place.

    Raises:
        ValueError: an unknown, repeated or missing input (the message lists the inputs;
            config validation reports it with the key).
    """
    named = places(template)
    unknown = [n for n in named if n not in inputs]
    repeated = sorted({n for n in named if named.count(n) > 1})
    left_out = [n for n in inputs if n not in named]
    for problem, names in (("names no input", unknown), ("places twice", repeated),
                           ("does not place", left_out)):
        if names:
            raise ValueError(f"prompt {template!r} {problem}: {', '.join(names)}; the inputs "
                              f"are {', '.join(inputs)}, each placed once as {{name}}")


@dataclass(frozen=True)
class Piece:
    """Literal token ids, or the place of an input."""

    ids: tuple[int, ...] = ()
    input: str | None = None


def prompt_pieces(template: str, tokenizer: Any, chat_template: bool,
                  system: str | None) -> list[Piece]:
    """The prompt as pieces: the template inside the chat template, cut at its places.

    Args:
        tokenizer: the LM's transformers tokenizer.
        chat_template: wrap the template in the model's chat template (when it has one).
        system: a system message replacing the chat template's default one (None keeps it).
    """
    marked = _PLACE.sub(lambda m: _SENTINEL.format(m.group(1)), _escaped(template))
    marked = marked.replace("\uE002", "{").replace("\uE003", "}")
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system is not None else []) \
            + [{"role": "user", "content": marked}]
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = marked
    parts = _SPLIT.split(text)  # literal, name, literal, name, ..., literal
    pieces = []
    for i, part in enumerate(parts):
        if i % 2:
            pieces.append(Piece(input=part))
        elif part:
            pieces.append(Piece(ids=tuple(tokenizer.encode(part, add_special_tokens=False))))
    return pieces
