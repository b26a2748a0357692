"""How results are shown: -o table (rich tables, for people) or -o json (the REST
API's camelCase field names, for scripts). Results go to stdout; progress,
prompts and errors go to stderr, so `-o json | jq` sees only JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import cache
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table, or json for scripts.")]

# A column: its header, and the camelCase key of the JSON form (dots for nested) or a function of it.
Column = tuple[str, str | Callable[[dict], Any]]


@cache
def console(*, stderr: bool = False) -> Console:
    """A terminal gets rich's width; a pipe gets rows that never fold, one line each, for grep."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 10_000, highlight=False)


def as_dict(message: Message) -> dict:
    """The message as the REST API's data: camelCase, RFC 3339 times, zero values included."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def lookup(data: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def at(key: str) -> Callable[[dict], str | None]:
    """A timestamp column, to the second: the fraction is noise in a table."""
    def get(data: dict) -> str | None:
        value = lookup(data, key)
        return value.split(".")[0].rstrip("Z") + "Z" if value else None
    return get


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for header, _ in columns:
        grid.add_column(header, overflow="fold")
    for row in rows:
        grid.add_row(*(cell(get(row) if callable(get) else lookup(row, get)) for _, get in columns))
    return grid


def details(data: dict) -> Table:
    """One resource as key/value lines; nested values as compact JSON."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in data.items():
        grid.add_row(key, cell(value))
    return grid


def show(result: Message | Sequence[Message], output: Output, columns: Sequence[Column] = ()) -> None:
    """A resource (key/value lines) or a list of them (a table with `columns`), or their JSON."""
    if isinstance(result, Message):
        data: Any = as_dict(result)
        if output is Output.JSON:
            print_json(data)
        else:
            console().print(details(data))
        return
    rows = [as_dict(item) for item in result]
    if output is Output.JSON:
        print_json(rows)
    else:
        console().print(table(rows, columns))
