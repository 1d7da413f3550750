"""``--help`` with options in named sections (click lists them in one flat block otherwise)."""

from __future__ import annotations

from typing import Any

import click


class SectionedCommand(click.Command):
    """A command whose options carry a section name (``section=`` in :func:`option`) and are
    listed under it, in the order the sections first appear."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "section", "Other options"), []).append(record)
        if "Other options" in sections:  # --help last
            sections["Other options"] = sections.pop("Other options")
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


class SectionedOption(click.Option):
    def __init__(self, *args: Any, section: str = "Other options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def option(*decls: str, section: str, **kwargs: Any) -> Any:
    """``click.option`` with a help section."""
    return click.option(*decls, cls=SectionedOption, section=section, **kwargs)


def with_options(options: list[Any]) -> Any:
    """Apply a list of option decorators (listed top to bottom as they appear in --help)."""

    def decorate(function: Any) -> Any:
        for decorator in reversed(options):
            function = decorator(function)
        return function

    return decorate


def option_name(decorator: Any) -> str:
    """The parameter name of a ``click.option`` decorator (to share options between commands)."""

    def probe() -> None:
        """Only carries the option."""

    decorator(probe)
    return probe.__click_params__[-1].name  # type: ignore[attr-defined]
