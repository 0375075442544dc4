"""The ``passerelle`` command. Commands translate; the client does the work.

Errors meant for users (:class:`passerelle.errors.PasserelleError`) print one line and exit
with status 1; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer

from passerelle.__about__ import __version__
from passerelle.cli import admin, batch, datasets, feedback, monitoring, registry, serving
from passerelle.cli import pipelines as pipelines_cli
from passerelle.cli._common import err_console
from passerelle.cli.tokens import tokens_app
from passerelle.errors import PasserelleError

app = typer.Typer(
    name="passerelle",
    help="Take a trained model to a monitored production endpoint, and keep it healthy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"passerelle {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug


app.command("register")(registry.register)
app.add_typer(registry.models_app, name="models")
app.add_typer(registry.versions_app, name="versions")
app.add_typer(registry.alias_app, name="alias")
app.add_typer(datasets.datasets_app, name="datasets")
app.command("config")(admin.config)
app.add_typer(admin.db_app, name="db")
app.command("audit")(admin.audit)
app.command("doctor")(admin.doctor)
app.command("gc")(admin.gc)
app.command("score")(batch.score)
app.command("export")(batch.export)
app.add_typer(batch.batch_app, name="batch")
app.command("deploy")(serving.deploy)
app.command("promote")(serving.promote)
app.command("rollback")(serving.rollback)
app.command("serve")(serving.serve)
app.add_typer(serving.endpoints_app, name="endpoints")
app.add_typer(serving.predictions_app, name="predictions")
app.add_typer(feedback.feedback_app, name="feedback")
app.add_typer(monitoring.monitor_app, name="monitor")
app.add_typer(monitoring.alerts_app, name="alerts")
app.add_typer(pipelines_cli.pipeline_app, name="pipeline")
app.add_typer(tokens_app, name="tokens")
app.command("lineage")(pipelines_cli.lineage)


@app.command("demo")
def demo(
    fast: bool = typer.Option(False, "--fast", help="Smaller data, for a quick look."),
    home: str | None = typer.Option(None, "--home", help="Where the demo's store lives (default: settings)."),
) -> None:
    """Generate churn data, train two models, register them with their dataset, show the registry."""
    from passerelle.demo.run import run_demo

    run_demo(fast=fast, home=home)


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    err_console.print(f"[yellow]warning:[/] {message}")


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    if not debug:
        warnings.showwarning = _show_warning
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except PasserelleError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if debug:
            raise
        # A usage error (missing option, bad value). Typer may bundle its own copy of click, so
        # the exception is recognised by what it can do rather than by click's class.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        err_console.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
