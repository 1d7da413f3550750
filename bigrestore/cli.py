"""The ``bigrestore`` command line: parses and validates arguments, calls the Python API.

This is the only place where errors become exit codes (sysexits, DESIGN.md decision 8) and
where anything is printed for the user. Nothing imports this module.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from bigrestore import __version__
from bigrestore.errors import BigrestoreError


class _UserError(click.ClickException):
    """A BigrestoreError shown as one line, with its sysexits code, never as a traceback."""

    def __init__(self, error: BigrestoreError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"bigrestore: error: {self.message}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BigrestoreError as error:
            raise _UserError(error) from error


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="bigrestore")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Restore large fluorescence-microscopy images (OME-Zarr) with a conditional diffusion model.

    \b
    Typical session:
      bigrestore convert stack.tif stack.zarr          # TIFF -> OME-Zarr
      bigrestore info stack.zarr                       # what is in it
      bigrestore run stack.zarr --samples 8            # restore: mean, std, entropy
      bigrestore evaluate stack.restored.zarr/mean truth.zarr --report report/

    Exit codes: 0 ok, 2 usage, 65 bad data/metadata, 66 missing input, 73 cannot create
    output, 74 I/O error, 75 interrupted (resumable), 78 incompatible model/config.
    """
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed sets its loggers to INFO when imported, and their records propagate to this
    # handler: filter at the handler so the cluster's start/stop chatter needs -v
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


# --- commands: one module each in bigrestore.commands; this file only wires them ---
from bigrestore.commands import (  # noqa: E402
    calibrate,
    convert,
    demo,
    evaluate,
    info,
    plan,
    register,
    run,
    train,
)

for _module in (convert, info, plan, run, calibrate, train, evaluate, register, demo):
    cli.add_command(_module.command)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="bigrestore")


if __name__ == "__main__":
    sys.exit(main())
