"""`TokenInspector`: type text and see it become tokens, live; and what the preprocessor makes of it."""

from __future__ import annotations

from typing import Any

import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.inspect._sources import tokenizer_of
from kerasllm_widget.widgets.inspected_sequence import text_sequence
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle, source_name


class TokenInspector(InspectorWidget):
    """An editable text box over its tokens: chips with ids, readable pieces (``␣`` for a leading
    space, ``↵`` for a newline), special tokens marked, counts of characters, bytes and tokens; a
    hover or click shows a token's id, raw bytes and decoded text. Below, the preprocessor's table
    (``token_ids``, ``padding_mask``, labels, ``sample_weight``) for ``sequence_length``.

    Args:
        model_or_tokenizer: a `Llama3CausalLM`, a `Llama3Tokenizer`, or a preset name.
        text: the starting text.
        compare_with: a second model, tokenizer or preset name, tokenized side by side.
        sequence_length: the preprocessor view's length (0 hides it).

    Example:
        >>> from kerasllm_widget import TokenInspector
        >>> TokenInspector("smollm2-135m-instruct", text="Hello world!")  # doctest: +SKIP
    """

    _esm = bundle("tokens")
    _css = bundle("tokens", "css")

    text = traitlets.Unicode("").tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    sequence_length = traitlets.Int(16).tag(sync=True)

    def __init__(
        self,
        model_or_tokenizer: Any,
        text: str = "",
        compare_with: Any = None,
        sequence_length: int = 16,
    ) -> None:
        source = model_or_tokenizer
        if isinstance(source, str):
            source = tokenizer_of(source)
        other = tokenizer_of(compare_with) if compare_with is not None else None
        labels = [source_name(model_or_tokenizer)]
        if other is not None:
            labels.append(source_name(compare_with))
        super().__init__(text=text, labels=labels, sequence_length=int(sequence_length))
        self.source = source
        self.compare_with = other
        self._start_service(
            model=lambda: self.source,
            sequence=lambda text: text_sequence(self.source, self.text if text is None else text),
            compare_tokenizer=lambda: self.compare_with,
            labels=lambda: list(self.labels),
        )

    @property
    def table(self) -> inspect.TokenTable:
        """The tokens of the current text, as numpy-level data.

        Example:
            >>> TokenInspector(tokenizer, "Hello").table.ids  # doctest: +SKIP
            array([9906], dtype=int32)
        """
        return inspect.tokens(self.source, self.text)

    @property
    def preprocessed(self) -> inspect.PreprocessTable:
        """The preprocessor's table for the current text at ``sequence_length``."""
        return inspect.preprocess(self.source, [self.text], sequence_length=self.sequence_length)
