"""How the ``mmfuse`` command reports click's own errors: a misspelt command or option, a
missing argument. Kept apart from ``cli.py``, which holds the commands themselves."""

from __future__ import annotations


def click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Usage-error, click-error and abort classes of click and of the click copy that newer
    typer releases vendor as ``typer._click`` (raised instead of click's own)."""
    import importlib

    import typer

    modules = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return (tuple(m.UsageError for m in modules), tuple(m.ClickException for m in modules),
            (typer.Abort, *(m.Abort for m in modules if hasattr(m, "Abort"))))


def usage_message(exc: Exception) -> str:
    """The usage line, where to find help, and the error with a did-you-mean for a misspelt
    option (a misspelt command gets click's own "Did you mean")."""
    from .config_base import did_you_mean

    ctx = getattr(exc, "ctx", None)
    lines = []
    if ctx is not None:
        lines += [ctx.get_usage(), f"Try '{ctx.command_path} --help' for help.", ""]
    option = getattr(exc, "option_name", None)
    if option and type(exc).__name__ == "NoSuchOption" and ctx is not None:
        names = {o.lstrip("-"): o for p in ctx.command.params for o in getattr(p, "opts", [])
                 if o.startswith("--")}
        hint = did_you_mean(option.lstrip("-"), list(names)).replace("'", "'--", 1)
        message = f"{exc.message}{hint or '; options: ' + ', '.join(sorted(names.values()))}"
    else:
        message = exc.format_message()
    return "\n".join(lines + [f"error: {message}"])
