"""The strict base of every config section and component option model.

Kept apart from config.py so that component modules can import it without a cycle.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError


def did_you_mean(word: str, choices: list[str]) -> str:
    """A ``" (did you mean 'x'?)"`` hint, or an empty string when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class StrictModel(BaseModel):
    """A config section: unknown keys raise an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key{hint}; allowed keys: {allowed}",
                        {"key": str(key), "hint": did_you_mean(str(key), allowed),
                         "allowed": ", ".join(allowed)},
                    )
        return data


Options = StrictModel
"""Options of a registered encoder, fusion or head."""


# pydantic names the member of a union that failed (``epochs.constrained-int``); not a key
_UNION_MEMBER = re.compile(r"^(constrained-\w+|literal\[.*\]|int|float|str|bool|none|"
                           r"list\[.*\]|tuple\[.*\]|function-\w+\[.*\])$")


def format_errors(exc: ValidationError) -> list[str]:
    """One line per bad key: its path, what is wrong (the reasons of a union's members joined
    with 'or') and the value given."""
    problems: dict[tuple[str, str], list[str]] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _UNION_MEMBER.match(str(p))]
        if err["type"] == "unknown_key":
            loc.append(err["ctx"]["key"])
            problems.setdefault((".".join(loc), ""), []).append(err["msg"])
            continue
        shown = err.get("input")
        value = "" if isinstance(shown, dict | list) or shown is None else f" (got {shown!r})"
        msg = err["msg"].removeprefix("Value error, ")
        problems.setdefault((".".join(loc) or "(top level)", value), []).append(msg)
    return [f"{where}: {' or '.join(msgs)}{value}" for (where, value), msgs in problems.items()]
