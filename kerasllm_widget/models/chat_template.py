"""Chat templates: a conversation rendered into the one string the model reads.

Checkpoints carry their chat template as Jinja (``chat_template`` in ``tokenizer_config.json`` or
``tokenizer.chat_template`` in GGUF metadata). We render it the way Hugging Face transformers
does (``apply_chat_template``): a sandboxed, immutable Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that does not escape HTML,
and the ``raise_exception`` and ``strftime_now`` globals. Same template and messages, same string.

Templates come from checkpoints downloaded from the internet, so a render also has a budget of
time and size (`chat_template_budget`): ``{{ 'x' * 10**10 }}`` or nested ``range(10**5)`` loops
raise `ChatTemplateBudgetError` at once or at the deadline. The budgets are the ``RENDER_*``
settings (read at each render; they live in `chat_template_budget`, and reading or setting them
here reaches them there) or `render_chat_template`'s arguments.

The template belongs to the tokenizer, as in transformers (`Llama3Tokenizer.apply_chat_template`),
so it lives beside it in `models`; the chat and the preset export reach it through the tokenizer.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError

from kerasllm_widget.models import chat_template_budget
from kerasllm_widget.models.chat_template_budget import (
    BUDGET_HINT,
    RENDER_SETTINGS,
    budgeted_sandbox,
    check_json_indent,
    render_within_budget,
)
from kerasllm_widget.models.chat_template_errors import ChatTemplateBudgetError, ChatTemplateError

__all__ = [
    "ChatTemplateBudgetError",
    "ChatTemplateError",
    "compile_chat_template",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_BOS_TOKEN",
    # Passed through to chat_template_budget by the module type at the end of this file.
    "RENDER_MAX_OUTPUT_CHARS",  # noqa: F822
    "RENDER_MAX_RANGE",  # noqa: F822
    "RENDER_OUTPUT_CHARS_PER_INPUT_CHAR",  # noqa: F822
    "RENDER_TIME_BUDGET_S",  # noqa: F822
    "render_chat_template",
    "select_chat_template",
]

LLAMA3_BOS_TOKEN = "<|begin_of_text|>"

# Meta-Llama-3-Instruct's own template: the header format of the seed document. Used when a
# checkpoint has no template of its own.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


class _RaisedByTemplate(TemplateError):
    """What ``raise_exception`` raises inside a template, told apart from Jinja's own errors."""


def _raise_exception(message: str) -> None:
    raise _RaisedByTemplate(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    check_json_indent(indent)
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates need plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers' mark around the assistant's
    tokens (for ``return_assistant_tokens_mask``); rendering shows the block's body as is."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)  # the "generation" tag itself
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compiles a chat template once (later calls with the same text return the same object).

    Example:
        >>> compile_chat_template("{{ messages | length }}").render(messages=[1, 2])
        '2'
    """
    # Templates come from checkpoints downloaded from the internet: the sandbox keeps them from
    # reaching Python internals; compiling once per template keeps each chat turn cheap.
    env = budgeted_sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"chat template does not compile (line {error.lineno}): {error.message}. "
            "Check the checkpoint's `chat_template` or pass a template of your own."
        ) from error


def _plain(value: Any) -> Any:
    # What the template sees is rebuilt from plain JSON types, so that it cannot call methods of
    # rich objects (arrays, dataclasses) passed in by the caller.
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"chat message {index} should be a dict like {{'role': 'user', 'content': '...'}}, "
                f"got {type(message).__name__}"
            )
        # Keys set to None are dropped, as transformers does: templates test `is defined`.
        normalized.append({k: _plain(v) for k, v in message.items() if v is not None})
    return normalized


def continue_final_message(rendered: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The render cut right after the last message's content, so that generation continues
    that message (transformers' ``continue_final_message=True``).

    Example:
        >>> continue_final_message("<u>Hi</u><a>Once upon</a>", [{"role": "user", "content": "Hi"},
        ...     {"role": "assistant", "content": "Once upon"}])
        '<u>Hi</u><a>Once upon'
    """
    if not messages:
        raise ValueError("continue_final_message=True needs a conversation with a last message.")
    final = messages[-1].get("content")
    if isinstance(final, (list, tuple)):  # content blocks: the last text block
        final = next(
            (b.get("text") for b in reversed(final) if isinstance(b, Mapping) and "text" in b), None
        )
    if not isinstance(final, str) or final.strip() not in rendered:
        raise ValueError(
            "continue_final_message=True but the last message's text does not appear in the "
            "rendered chat; the template changes it, so it cannot be continued."
        )
    start = rendered.rindex(final.strip())
    kept = final.lstrip()
    if rendered[start : start + len(kept)] == kept:  # the template keeps the spacing
        return rendered[: start + len(kept)]
    return rendered[: start + len(final.strip())]


def select_chat_template(chat_template: Any, name: str = "default") -> str | None:
    """Picks one template from a ``tokenizer_config.json`` ``chat_template`` value.

    The value is a string, or a list of ``{"name": ..., "template": ...}`` (checkpoints with
    tool-use variants); the one called ``name`` is returned, else the first.

    Example:
        >>> select_chat_template([{"name": "default", "template": "{{ messages }}"}])
        '{{ messages }}'
    """
    if chat_template is None or isinstance(chat_template, str):
        return chat_template
    if isinstance(chat_template, Mapping):
        chat_template = [{"name": k, "template": v} for k, v in chat_template.items()]
    if isinstance(chat_template, Sequence):
        templates = {item.get("name"): item.get("template") for item in chat_template}
        if name in templates:
            return templates[name]
        return next(iter(templates.values()), None)
    raise TypeError(
        f"chat_template should be a string or a list of named templates, got {chat_template!r}"
    )


def render_chat_template(
    template: str | None,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = "",
    time_budget_s: float | None = None,
    max_output_chars: int | None = None,
    **extra: Any,
) -> str:
    """Renders a conversation with a checkpoint's Jinja chat template, as transformers does.

    ``template=None`` uses the Llama 3 Instruct template (the header format of the seed
    document); ``bos_token=None`` then means ``<|begin_of_text|>`` (and ``""`` for any other
    template). ``extra`` reaches the template as variables (``tools``, ``date_string``, ...).
    ``time_budget_s`` and ``max_output_chars`` bound the render (``None``: the ``RENDER_*``
    constants; the output budget grows with the conversation's length).
    Raises `ChatTemplateError` when the template does not compile or raises, and its subclass
    `ChatTemplateBudgetError` when it goes over the budget.

    Example:
        >>> render_chat_template(None, [{"role": "user", "content": "Hello "}])
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n'
    """
    if template is None:
        template = LLAMA3_CHAT_TEMPLATE
        bos_token = LLAMA3_BOS_TOKEN if bos_token is None else bos_token
    compiled = compile_chat_template(template)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update(_plain(extra))
    variables.update(
        messages=_normalize_messages(messages),
        add_generation_prompt=bool(add_generation_prompt),
        bos_token="" if bos_token is None else bos_token,
        eos_token="" if eos_token is None else eos_token,
    )
    try:
        return render_within_budget(
            compiled, variables, time_budget_s=time_budget_s, max_output_chars=max_output_chars
        )
    except ChatTemplateError:
        raise
    except _RaisedByTemplate as error:
        raise ChatTemplateError(f"chat template raised an error: {error.message}") from error
    except TemplateError as error:
        raise ChatTemplateError(
            f"chat template failed while rendering {len(messages)} message(s): "
            f"{type(error).__name__}: {error.message}"
        ) from error
    except RecursionError as error:
        raise ChatTemplateError(
            f"chat template recursed too deeply while rendering {len(messages)} message(s) "
            f"(a macro or recursive loop without end?). {BUDGET_HINT}"
        ) from error
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as error:
        raise ChatTemplateError(
            f"chat template failed while rendering {len(messages)} message(s): "
            f"{type(error).__name__}: {error}"
        ) from error


# --------------------------------------------------------------------------- RENDER_* pass-through
# The RENDER_* settings were first set here (`chat_template.RENDER_TIME_BUDGET_S = 1.0`, README);
# reads and writes of them through this module reach the one copy in `chat_template_budget`, so
# that no stale copy here can disagree with what a render reads.


def _pass_through(name: str) -> property:
    def get(module: types.ModuleType) -> Any:
        return getattr(chat_template_budget, name)

    def put(module: types.ModuleType, value: Any) -> None:
        setattr(chat_template_budget, name, value)

    return property(get, put, doc=f"`chat_template_budget.{name}`.")


class _ChatTemplateModule(types.ModuleType):
    """This module's type: its RENDER_* attributes are properties of it, so that reading,
    setting and monkeypatching them (pytest restores a data descriptor by setting it back) all
    reach `chat_template_budget`."""


for _name in RENDER_SETTINGS:
    setattr(_ChatTemplateModule, _name, _pass_through(_name))
sys.modules[__name__].__class__ = _ChatTemplateModule
