"""User-written Jinja2 templates (chat templates, prompt templates) compile and render
in a bounded sandbox, shared by the registry's trial render at registration and the
router's render per request: every way a template can spend time or memory is bounded,
and every failure is a 400 naming the field."""

from __future__ import annotations

import functools
import re
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import InvalidArgument

TEMPLATE_MAX_RANGE = 1000  # items of one range(): a 30M-iteration loop stops at its first step
# Characters one render may output, and may build by a size it names ('x' * n, '%20s', center(n)):
# a prompt fits, a memory bomb does not.
TEMPLATE_MAX_TEXT = 4 * 1024 * 1024
TEMPLATE_MAX_POWER_BITS = 4096  # bits of a '**' result: 10**10**10 would hold the interpreter in C
TEMPLATE_RENDER_SECONDS = 1.0  # a real template renders in milliseconds; past this a loop runs away
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?")
_RENDER = threading.local()  # .left: characters the render on this thread may still build


class _OverBudget(BaseException):  # noqa: N818
    """Raised inside a render that ran past its time budget; a BaseException, like
    CancelledError, so that no `except Exception` on the way can swallow it."""


def _bounded_range(*args: int) -> range:
    items = range(*args)
    try:
        too_long = len(items) > TEMPLATE_MAX_RANGE
    except OverflowError:  # more items than a C integer holds
        too_long = True
    if too_long:
        shown = ", ".join(map(str, args))[:40]
        raise SecurityError(f"range({shown}) is too long: a template may loop at most {TEMPLATE_MAX_RANGE} times")
    return items


def _spend(size: int, what: str) -> None:
    """Charge what an operation is about to build against the render's TEMPLATE_MAX_TEXT, before it runs."""
    left = getattr(_RENDER, "left", TEMPLATE_MAX_TEXT)
    if size > left:
        raise SecurityError(f"{what} would build {size} characters; a render may build at most "
                            f"{TEMPLATE_MAX_TEXT} in all")
    _RENDER.left = left - size


def _spend_sizes(values: Iterable[object], what: str) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            _spend(value, what)


def _spend_spec_digits(spec: str, what: str) -> None:
    """Widths and precisions written in a format string ("%20s", "{:>20}")."""
    for digits in re.findall(r"\d+", spec):
        _spend(int(digits) if len(digits) <= 12 else TEMPLATE_MAX_TEXT + 1, what)


def _spend_percent_format(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if "*" in (width, precision):
            raise SecurityError("a '*' width in a '%' format is not allowed in templates")
        _spend_spec_digits(f"{width} {precision}", f"the '%' format {fmt[:40]!r}")


def _spend_brace_format(fmt: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise SecurityError("a nested '{...}' width in str.format is not allowed in templates")
        _spend_spec_digits(spec or "", f"the format {fmt[:40]!r}")


def _spend_repetition(left: object, right: object) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | bytes | list | tuple) and isinstance(count, int) and count > 0:
            _spend(len(sequence) * count, "'*'")


def _check_power(base: object, exponent: object) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        if exponent * abs(base).bit_length() > TEMPLATE_MAX_POWER_BITS:
            raise SecurityError(f"'**' would build a number of about {exponent * abs(base).bit_length()} bits "
                                f"(at most {TEMPLATE_MAX_POWER_BITS})")


def _join_within_limit(parts: Iterable[str]) -> str:
    """"".join for the output and every buffer (macros, blocks, filters) of a render."""
    pieces, size = [], 0
    for part in parts:
        size += len(part)
        if size > TEMPLATE_MAX_TEXT:
            raise SecurityError(f"the rendered text is longer than {TEMPLATE_MAX_TEXT} characters")
        pieces.append(part)
    return "".join(pieces)


def _size_charged(name: str) -> Callable[..., Any]:
    """A built-in filter whose numeric arguments are sizes (center's and indent's width)."""
    filter_function = FILTERS[name]

    @functools.wraps(filter_function)  # keeps jinja_pass_arg, so Jinja still passes what it needs
    def charged(*args: Any, **kwargs: Any) -> Any:
        _spend_sizes((*args[1:], *kwargs.values()), f"|{name}")
        return filter_function(*args, **kwargs)
    return charged


def _format_charged(value: Any, *args: Any, **kwargs: Any) -> str:
    _spend_percent_format(str(value))
    return FILTERS["format"](value, *args, **kwargs)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus bounds on what runs in C, where no time budget can interrupt
    it: range(), '**', and the text that '*', widths and the output build (TEMPLATE_MAX_TEXT)."""

    intercepted_binops = frozenset({"*", "**", "%"})
    concat = staticmethod(_join_within_limit)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters.update({"center": _size_charged("center"), "indent": _size_charged("indent"),
                             "format": _format_charged})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _spend_repetition(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _spend_percent_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if isinstance(getattr(__obj, "__self__", None), str):  # "x".center(10**9), "x".zfill(10**9)
            _spend_sizes((*args, *kwargs.values()), f"str.{getattr(__obj, '__name__', 'method')}")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        _spend_brace_format(value.__self__)
        return formatter


_STRICT_SANDBOX = BoundedSandbox()
# Prompt templates name variables that only a later caller supplies: undefined renders as empty.
_LENIENT_SANDBOX = BoundedSandbox(undefined=ChainableUndefined)


def compile_template(source: str, field: str, *, lenient: bool = False) -> Template:
    """Parse and compile in the bounded sandbox; a template that cannot compile is a 400 naming field."""
    try:
        return (_LENIENT_SANDBOX if lenient else _STRICT_SANDBOX).from_string(source)
    except TemplateSyntaxError as exc:
        raise InvalidArgument(f"{field} is not a valid Jinja2 template (line {exc.lineno}): {exc.message}",
                              reason="INVALID_TEMPLATE") from exc
    except (RecursionError, SyntaxError, MemoryError):  # the parser's or Python compiler's depth limits
        pass  # refused below, outside this block (_TOO_DEEP)
    except Exception as exc:  # noqa: BLE001 - e.g. a 5000-digit number literal: the source's fault
        raise InvalidArgument(f"{field} could not be compiled: {type(exc).__name__}: {str(exc)[:200]}",
                              reason="INVALID_TEMPLATE") from exc
    raise InvalidArgument(f"{field} nests too deeply (parentheses, ifs or loops inside one another); flatten it",
                          reason="INVALID_TEMPLATE")


def render_template(template: Template, variables: dict[str, Any], field: str, *,
                    budget_s: float = TEMPLATE_RENDER_SECONDS, tolerate_undefined: bool = False) -> str:
    """Render within the sandbox's bounds and a time budget; any failure is a 400 naming field,
    because in the sandbox every failure is the template's doing. Call it off the event loop.
    tolerate_undefined: a trial render without the variables, which only the bounds may fail."""
    try:
        return _render_within(template, variables, budget_s)
    except _OverBudget as exc:
        raise InvalidArgument(f"{field} took longer than {budget_s:g}s to render; bound its loops",
                              reason="TEMPLATE_TOO_SLOW") from exc
    except (UndefinedError, TypeError) as exc:
        if tolerate_undefined:  # x + 1, range(n): the values a later caller supplies decide
            return ""
        raise _render_failed(field, exc) from exc
    except RecursionError:
        pass  # refused below, outside this block (_TOO_DEEP)
    except Exception as exc:  # noqa: BLE001 - 1//0, a missing key, a bound: the template's fault, not ours
        raise _render_failed(field, exc) from exc
    raise InvalidArgument(f"{field} failed to render: it recurses too deeply (a macro calling itself?)",
                          reason="TEMPLATE_ERROR")


# _TOO_DEEP: a template that nests or recurses too deeply is refused outside the except block that caught
# the error, so that the refusal holds neither it as its cause nor as its context. The error's traceback is
# the parser's or the render's thousands of frames: once chained, whatever formatted the refusal (a log, a
# task's unretrieved exception, pytest) walked them, and a RecursionError while formatting it failed a test
# as an unraisable exception (test_hostile_prompt_template_is_refused[postgresql-2000 nested ifs]).


def _render_failed(field: str, exc: Exception) -> InvalidArgument:
    why = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
    return InvalidArgument(f"{field} failed to render: {why[:300]}", reason="TEMPLATE_ERROR")


def _render_within(template: Template, variables: dict[str, Any], budget_s: float) -> str:
    """A tracer checks the clock on each line this thread runs, so a runaway loop stops at the budget
    and the worker thread is free again (a thread cannot be killed from outside)."""
    deadline = time.monotonic() + budget_s
    _RENDER.left = TEMPLATE_MAX_TEXT

    def stop_past_deadline(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if time.monotonic() >= deadline:
            raise _OverBudget
        return stop_past_deadline

    previous = sys.gettrace()  # a debugger's or coverage's tracer, given back afterwards
    sys.settrace(stop_past_deadline)
    try:
        return template.render(variables)
    finally:
        sys.settrace(previous)
