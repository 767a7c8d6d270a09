"""The render budget of a chat template: how long a render may take and how large what it makes.

Templates come from checkpoints downloaded from the internet, so a render has a budget: a
wall-clock deadline (checked at every loop iteration, call and output chunk) and a size limit on
the output and on any one string or list the template builds (``*``, ``+``, ``~``, ``join``,
``center``, ``replace``, format widths, ...), checked *before* the value is made. Before the
budget, ``{{ 'x' * 10**10 }}`` ate 22 GB and nested ``range(10**5)`` loops never ended; now both
raise `ChatTemplateBudgetError` at once or at the deadline.

The budgets are the ``RENDER_*`` settings below, read at each render (set them on this module, or
on `chat_template`, which passes them through), or `render_chat_template`'s arguments. The
sandboxed environment that enforces them is `budgeted_sandbox`; `chat_template` compiles and
renders with it.
"""

from __future__ import annotations

import math
import re
import string
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from contextvars import ContextVar
from dataclasses import dataclass
from functools import update_wrapper
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_center, do_format, do_indent, do_join, do_replace
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kerasllm_widget.models.chat_template_errors import ChatTemplateBudgetError

__all__ = [
    "BUDGET_HINT",
    "RENDER_MAX_OUTPUT_CHARS",
    "RENDER_MAX_RANGE",
    "RENDER_OUTPUT_CHARS_PER_INPUT_CHAR",
    "RENDER_SETTINGS",
    "RENDER_TIME_BUDGET_S",
    "budgeted_sandbox",
    "check_json_indent",
    "render_within_budget",
]

# The budgets. Real templates render a 100-turn conversation in milliseconds, into output about
# as long as the conversation plus a few hundred characters per turn: these are generous.
RENDER_TIME_BUDGET_S = 5.0
# Output (and any one string or list built on the way): this many characters, plus
# RENDER_OUTPUT_CHARS_PER_INPUT_CHAR per character of the messages and variables passed in.
RENDER_MAX_OUTPUT_CHARS = 4_000_000
RENDER_OUTPUT_CHARS_PER_INPUT_CHAR = 4
# Longest `range(...)` a template may ask for (jinja2's own sandbox limit, which raised a bare
# OverflowError).
RENDER_MAX_RANGE = 100_000
# Their names (`chat_template` passes reads and writes of these through to this module).
RENDER_SETTINGS = (
    "RENDER_MAX_OUTPUT_CHARS",
    "RENDER_MAX_RANGE",
    "RENDER_OUTPUT_CHARS_PER_INPUT_CHAR",
    "RENDER_TIME_BUDGET_S",
)

# Python only prints ints of up to 4,300 digits (about 14,300 bits); `2 ** 10**9` would compute
# for minutes before failing to print, so powers past this are refused.
_MAX_POWER_BITS = 1 << 16
_MAX_JSON_INDENT = 64  # real templates indent tools' JSON by 2 or 4

BUDGET_HINT = (
    "Use a simpler template, or give the tokenizer another one (`tokenizer.chat_template = ...` "
    "or `Llama3Tokenizer(..., chat_template=...)`); the budgets are the RENDER_* settings of "
    "kerasllm_widget.models.chat_template_budget."
)


# --------------------------------------------------------------------------- render budget


@dataclass
class _RenderBudget:
    seconds: float
    max_chars: int
    deadline: float

    @classmethod
    def start(cls, seconds: float, max_chars: int) -> _RenderBudget:
        return cls(float(seconds), int(max_chars), time.monotonic() + float(seconds))

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatTemplateBudgetError(
                f"chat template took more than {self.seconds:g} s to render (its time budget, "
                f"RENDER_TIME_BUDGET_S): it loops too long. {BUDGET_HINT}"
            )

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise ChatTemplateBudgetError(
                f"chat template asked for {what} of {size:,} characters or items, over its size "
                f"budget of {self.max_chars:,} (RENDER_MAX_OUTPUT_CHARS plus "
                f"RENDER_OUTPUT_CHARS_PER_INPUT_CHAR per character of the conversation). {BUDGET_HINT}"
            )

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.check_time()
            yield item


# The budget of the render under way in this thread (None outside render_chat_template, e.g. at
# compile time or for `compile_chat_template(...).render(...)`: size limits only, no deadline).
_ACTIVE_BUDGET: ContextVar[_RenderBudget | None] = ContextVar("chat_template_budget", default=None)


def _budget() -> _RenderBudget:
    budget = _ACTIVE_BUDGET.get()
    return (
        budget if budget is not None else _RenderBudget(math.inf, RENDER_MAX_OUTPUT_CHARS, math.inf)
    )


def _budgeted_range(*args: Any) -> range:
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:  # longer than sys.maxsize
        length = math.inf
    if length > RENDER_MAX_RANGE:
        shown = f"{length:,}" if length != math.inf else "more than 2**63"
        raise ChatTemplateBudgetError(
            f"chat template asked for range({', '.join(map(repr, args))}): {shown} numbers, "
            f"over the limit of {RENDER_MAX_RANGE:,} (RENDER_MAX_RANGE). {BUDGET_HINT}"
        )
    return numbers


def _sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))


def _width_size(text: str, width: Any) -> int:
    return max(len(text), width) if isinstance(width, int) else len(text)


def _replace_size(text: str, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


def _joined_size(separator: str, items: list[Any]) -> int:
    return len(separator) * max(len(items) - 1, 0) + sum(len(str(item)) for item in items)


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_format(budget: _RenderBudget, template: str, values: Any, printf: bool) -> None:
    """Refuses format widths and precisions (``'%099999999d'``, ``'{:>99999999}'``) over the
    size budget; widths taken from the values (``*``, nested ``{}``) are checked there."""
    numbers: list[str] = []
    from_values = False
    if printf:
        for width, precision in _PRINTF_SPEC.findall(template):
            numbers += [n for n in (width, precision) if n and n != "*"]
            from_values |= "*" in (width, precision)
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(template)]
        except ValueError:
            specs = []  # the formatter itself reports the malformed string
        for spec in specs:
            numbers += re.findall(r"\d+", spec)
            from_values |= "{" in spec
    if from_values:
        if isinstance(values, Mapping):
            values = list(values.values())
        elif not isinstance(values, (list, tuple)):
            values = [values]
        numbers += [str(abs(v)) for v in values if isinstance(v, int)]
    for number in numbers:
        width = int(number) if len(number) <= 18 else 10**18  # ints of 4,300+ digits won't parse
        budget.check_size(width, "a format width or precision")


def _check_binop(budget: _RenderBudget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if _sized(left) and isinstance(right, int):
            budget.check_size(len(left) * right, "a string or list (*)")
        elif _sized(right) and isinstance(left, int):
            budget.check_size(len(right) * left, "a string or list (*)")
    elif operator == "+":
        if _sized(left) and _sized(right):
            budget.check_size(len(left) + len(right), "a string or list (+)")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            bits = int(math.log2(abs(left)) * right)
            if bits > _MAX_POWER_BITS:
                raise ChatTemplateBudgetError(
                    f"chat template asked for {left} ** {right}, a number of about {bits:,} "
                    f"bits (the limit is {_MAX_POWER_BITS:,}). {BUDGET_HINT}"
                )
    elif operator == "%" and isinstance(left, str):
        _check_format(budget, left, right, printf=True)


def _str_method_size(name: str, text: str, args: tuple, kwargs: dict) -> int | None:
    def arg(index: int, key: str, default: Any) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name in ("center", "ljust", "rjust", "zfill"):
        return _width_size(text, arg(0, "width", 0))
    if name == "expandtabs":
        tabsize = arg(0, "tabsize", 8)
        return len(text) * max(tabsize, 1) if isinstance(tabsize, int) else None
    if name == "replace":
        return _replace_size(text, arg(0, "old", ""), arg(1, "new", ""), arg(2, "count", -1))
    return None


class _BudgetedCodeGenerator(CodeGenerator):
    """Jinja's code generator with two changes: every ``{% for %}`` iterates through the budget
    (so an empty nested loop still meets the deadline), and ``~`` checks the size it makes."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            loop.iter = nodes.Filter(
                loop.iter, _LOOP_FILTER, [], [], None, None,
                lineno=loop.lineno, environment=self.environment,
            )  # fmt: skip
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.budgeted_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the render budget checked where a template can loop, call, or
    build a large value."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})
    code_generator_class = _BudgetedCodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.check_time()
        _check_binop(budget, operator, left, right)
        return super().call_binop(context, operator, left, right)

    def budgeted_concat(self, values: tuple[Any, ...]) -> str:
        strings = [str(value) for value in values]  # what jinja2's str_join does
        _budget().check_size(sum(map(len, strings)), "a string (~)")
        return "".join(strings)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.check_time()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name == "join" and len(args) == 1 and not kwargs:
                args = (list(args[0]),)
                budget.check_size(_joined_size(owner, args[0]), "a string (str.join)")
            size = _str_method_size(name, owner, args, kwargs)
            if size is not None:
                budget.check_size(size, f"a string (str.{name})")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            values = list(args) + list(kwargs.values())
            if value.__name__ == "format_map" and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            _check_format(_budget(), template, values, printf=False)
            return wrapped(*args, **kwargs)

        return update_wrapper(checked, value)


# --------------------------------------------------------------------------- filters and globals
_LOOP_FILTER = "_kerasllm_budgeted_loop"


@jinja2.pass_context  # a context filter is never folded at compile time
def _budgeted_loop(context: Any, iterable: Any) -> Iterator[Any]:
    return _budget().iterate(iterable)


def check_json_indent(indent: Any) -> None:
    """Refuses a ``tojson`` indent wider than real templates use (each level repeats it).

    Example:
        >>> check_json_indent(2)
    """
    if isinstance(indent, (int, str)) and not isinstance(indent, bool):
        width = indent if isinstance(indent, int) else len(indent)
        if width > _MAX_JSON_INDENT:
            raise ChatTemplateBudgetError(
                f"chat template asked for tojson(indent={width}); the limit is "
                f"{_MAX_JSON_INDENT}. {BUDGET_HINT}"
            )


def _center(value: Any, width: int = 80) -> str:
    _budget().check_size(_width_size(str(value), width), "a string (center)")
    return do_center(value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _budget().check_size(len(text) + (text.count("\n") + 1) * step, "a string (indent)")
    return do_indent(s, width, first, blank)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    size = _joined_size(d, items) if attribute is None else len(str(d)) * max(len(items) - 1, 0)
    _budget().check_size(size, "a string (join)")
    return do_join(eval_ctx, items, d, attribute)


@jinja2.pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: str, new: str, count: int | None = None) -> str:
    _budget().check_size(_replace_size(str(s), old, new, count), "a string (replace)")
    return do_replace(eval_ctx, s, old, new, count)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format(_budget(), str(value), list(args) + list(kwargs.values()), printf=True)
    return do_format(value, *args, **kwargs)


# --------------------------------------------------------------------------- environment and render


def _text_size(value: Any) -> int:
    # Characters of text in a plain value (what the output budget grows with).
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(k) + _text_size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


def _render(compiled: jinja2.Template, variables: dict[str, Any], budget: _RenderBudget) -> str:
    # Streamed, so that output is counted and the deadline checked between chunks rather than
    # after the whole string exists.
    token = _ACTIVE_BUDGET.set(budget)
    try:
        pieces = []
        size = 0
        with closing(compiled.generate(**variables)) as chunks:
            for piece in chunks:
                size += len(piece)
                budget.check_size(size, "an output")
                budget.check_time()
                pieces.append(piece)
        return "".join(pieces)
    finally:
        _ACTIVE_BUDGET.reset(token)


def budgeted_sandbox(**options: Any) -> ImmutableSandboxedEnvironment:
    """The immutable sandbox with the render budget checked where a template can loop, call, or
    build a large value: its filters that can make large strings and its ``range`` checked too.
    ``options`` are Jinja environment options.

    Example:
        >>> budgeted_sandbox().from_string("{{ range(3) | list }}").render()
        '[0, 1, 2]'
    """
    env = _BudgetedSandbox(**options)
    env.filters.update(
        {
            "center": _center,
            "indent": _indent,
            "join": _join,
            "replace": _replace,
            "format": _format,
            _LOOP_FILTER: _budgeted_loop,
        }
    )
    env.globals["range"] = _budgeted_range
    return env


def render_within_budget(
    compiled: jinja2.Template,
    variables: dict[str, Any],
    *,
    time_budget_s: float | None = None,
    max_output_chars: int | None = None,
) -> str:
    """Renders a template compiled by a `budgeted_sandbox` under a time and size budget
    (``None``: the ``RENDER_*`` settings; the output budget grows with the variables' text).

    Example:
        >>> template = budgeted_sandbox().from_string("{{ 'x' * n }}")
        >>> render_within_budget(template, {"n": 3}, time_budget_s=1.0)
        'xxx'
    """
    if max_output_chars is None:
        max_output_chars = (
            RENDER_MAX_OUTPUT_CHARS + RENDER_OUTPUT_CHARS_PER_INPUT_CHAR * _text_size(variables)
        )
    seconds = RENDER_TIME_BUDGET_S if time_budget_s is None else time_budget_s
    return _render(compiled, variables, _RenderBudget.start(seconds, max_output_chars))
