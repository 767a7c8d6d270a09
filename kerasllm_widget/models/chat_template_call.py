"""`Llama3Tokenizer.apply_chat_template` with transformers' keywords: what each of them does
around the one render (`render_chat_template`).

transformers' ``tools``, ``documents``, ``chat_template`` (the text of a template),
``continue_final_message`` (end inside the last message, to continue it), ``tokenize=True`` (the
ids, as transformers gives them: no BOS beyond the template's) and ``return_dict``
(``{"input_ids", "attention_mask"}``) keep their meaning; any other keyword reaches the template
as a variable, as in transformers. Unlike transformers, text with the generation prompt comes
back by default (``tokenize=False``, ``add_generation_prompt=True``), as this package's callers
have always used it. ``return_assistant_tokens_mask`` is refused with a pointer to
the preprocessor, which masks the assistant's tokens for training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kerasllm_widget.models.chat_template import continue_final_message as cut_after_final
from kerasllm_widget.models.chat_template import render_chat_template

__all__ = ["apply_chat_template"]

# transformers' keywords that shape the returned ids (padding a batch, tensors of a framework):
# one conversation's ids need none of them; named here so that they are not rendered as
# template variables.
_TOKENIZE_ONLY = ("padding", "truncation", "max_length", "return_tensors", "tokenizer_kwargs")


def apply_chat_template(
    tokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Any] | None = None,
    documents: Sequence[Any] | None = None,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tokenize: bool = False,
    return_dict: bool = False,
    **extra: Any,
) -> Any:
    """The rendered conversation (text, ids, or ``{"input_ids", "attention_mask"}``).

    Example:
        >>> apply_chat_template(tokenizer, [{"role": "user", "content": "Hi"}], tokenize=True)  # doctest: +SKIP
        [128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271]
    """
    if extra.pop("return_assistant_tokens_mask", False):
        raise ValueError(
            "return_assistant_tokens_mask=True is not supported; to train on the assistant's "
            "tokens only, pass conversations to model.fit (or model.preprocessor), which weights "
            "exactly those tokens."
        )
    unused = [key for key in _TOKENIZE_ONLY if extra.pop(key, None) not in (None, False)]
    if unused and not tokenize:
        raise ValueError(f"{', '.join(unused)} only apply with tokenize=True.")
    if continue_final_message and add_generation_prompt:
        raise ValueError(
            "continue_final_message=True continues the last message, so it cannot be used with "
            "add_generation_prompt=True (which opens a new one); pass add_generation_prompt=False."
        )
    if chat_template is not None and "{" not in chat_template:
        raise ValueError(
            f"chat_template={chat_template!r}: pass the text of a Jinja template; this tokenizer "
            "keeps only the checkpoint's default template, not named ones."
        )
    special = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    special = {k: v for k, v in special.items() if v is not None}
    text = render_chat_template(
        chat_template if chat_template is not None else tokenizer.chat_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        **{**special, "tools": tools, "documents": documents, **extra},
    )
    if continue_final_message:
        text = cut_after_final(text, messages)
    if not tokenize:
        if return_dict:
            raise ValueError("return_dict=True needs tokenize=True (a dict of token ids).")
        return text
    # transformers tokenizes the render without adding special tokens: the template wrote them.
    ids = list(tokenizer.backend.encode(text, add_special_tokens=False).ids)
    if return_dict:
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}
    return ids
