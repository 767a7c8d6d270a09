"""What a chat template raises: `ChatTemplateError`, and `ChatTemplateBudgetError` past its budget.

In a module of their own so that the render budget (`chat_template_budget`), the renderer
(`chat_template`) and the special-token escaping of the tokenizer can all raise them without
importing one another; `chat_template` exports both.
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError

__all__ = ["ChatTemplateBudgetError", "ChatTemplateError"]


class ChatTemplateError(TemplateError, ValueError):
    """A chat template failed to compile or raised while rendering; the message says why.

    Example:
        >>> from kerasllm_widget.models.chat_template import render_chat_template
        >>> try:
        ...     render_chat_template("{{ raise_exception('no system role') }}", [])
        ... except ChatTemplateError as error:
        ...     print(error)
        chat template raised an error: no system role
    """


class ChatTemplateBudgetError(ChatTemplateError):
    """A chat template went over its render budget (time, output size, a value or range too large).

    Example:
        >>> from kerasllm_widget.models.chat_template import render_chat_template
        >>> try:
        ...     render_chat_template("{{ 'x' * 10**10 }}", [])
        ... except ChatTemplateBudgetError as error:
        ...     print(str(error)[:62])
        chat template asked for a string or list (*) of 10,000,000,000
    """
