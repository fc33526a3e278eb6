"""The one error path of the command line: every failure is one line on stderr and an exit code
(0 success, 1 runtime failure, 2 usage or configuration), a traceback only with `--debug`,
which is accepted anywhere on the command line (`bus --debug status`, `bus status --debug`)."""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

import typer

try:  # typer ≥ 0.20 vendors click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click  # type: ignore[no-redef]

from bus.cli.common import state
from bus.errors import BusError

_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def run(app: typer.Typer, argv: list[str] | None = None) -> NoReturn:
    """Run *app* on *argv* (default: sys.argv[1:]) and exit with its code."""
    args = list(sys.argv[1:] if argv is None else argv)
    args, state.debug = _without_debug(args)
    try:
        command = typer.main.get_command(app)
        _flags_without_type(command)
        code = command.main(args=args, prog_name="bus", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        exc.show()  # `bus dlq`: the help, as click does
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(f"{exc.format_message()}{hint}", exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except BusError as exc:
        if state.debug:
            raise
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: still one line
        if state.debug:
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(
            f"unexpected {type(exc).__name__}: {text} "
            "(run again with --debug for the traceback, and please report it)",
            1,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _flags_without_type(command: Any) -> None:
    """A flag takes no value: typer's help would show it as `--prune <bool>`."""
    for param in command.params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    made = command.get_help_option

    def help_option(ctx: Any) -> Any:  # made per context, so marked when made
        option = made(ctx)
        if option is not None:
            option.metavar = ""
        return option

    setattr(command, "get_help_option", help_option)  # noqa: B010
    for sub in (getattr(command, "commands", None) or {}).values():
        _flags_without_type(sub)


def _without_debug(args: list[str]) -> tuple[list[str], bool]:
    """*args* without `--debug` (before a `--`), and whether it was there."""
    end = args.index("--") if "--" in args else len(args)
    found = "--debug" in args[:end]
    return [a for i, a in enumerate(args) if a != "--debug" or i >= end], found


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {redact_text(message)}", file=sys.stderr)
    sys.exit(code)


def redact_text(text: str) -> str:
    """*text* with the password of every URL in it replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", text)
