"""`facet`: train, export, predict, score and serve. A module per command; heavy imports happen
inside the commands, so `facet predict` never loads torch."""
from __future__ import annotations

import logging

import typer

from facet import privacy

privacy.apply_defaults()

from facet.cli import (audit, build_set, demo, export, info, make_data, predict,  # noqa: E402
                       pseudo_label, report, score, serve, train, tune)

# Plain (click) help: rich markup would read the extras in "pip install 'facet[track]'" as tags.
app = typer.Typer(help="Face photos -> 18 classes (mask x gender x age).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")):
    # Third-party INFO chatter (e.g. the quantizer's) stays hidden unless --verbose.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("facet").setLevel(logging.DEBUG if verbose else logging.INFO)


# The order here is the order of `facet --help`.
app.command("make-data")(make_data.make_data)
app.command()(train.train)
app.command()(tune.tune)
app.command()(export.export)
app.command("build-set")(build_set.build_set)
app.command()(predict.predict)
app.command()(score.score)
app.command()(report.report)
app.command()(serve.serve)
app.command()(audit.audit)
app.command("pseudo-label")(pseudo_label.pseudo_label)
app.command()(info.info)
app.command()(demo.demo)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="facet")
