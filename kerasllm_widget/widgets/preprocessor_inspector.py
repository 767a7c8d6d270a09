"""`PreprocessorInspector`: what the causal-LM preprocessor feeds the model, as a table."""

from __future__ import annotations

from typing import Any

import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.inspect._sources import preprocessor_of
from kerasllm_widget.widgets.inspected_sequence import text_sequence
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle


class PreprocessorInspector(InspectorWidget):
    """One row group per text: ``token_ids``, ``padding_mask``, labels (the inputs shifted by
    one) and ``sample_weight``, as the seed prints them, with the start, end and padding cells
    highlighted. Several texts show how padding lines a batch up. Texts and the sequence length
    are editable in the view and as traitlets.

    Args:
        model_or_preprocessor: a `Llama3CausalLM`, a `Llama3CausalLMPreprocessor`, a tokenizer, or
            a preset name.
        texts: one string or a list (a batch).
        sequence_length: the packed length.

    Example:
        >>> from kerasllm_widget import PreprocessorInspector
        >>> PreprocessorInspector(model, ["Hello", "Hi!"], sequence_length=6)  # doctest: +SKIP
    """

    _esm = bundle("preprocess")
    _css = bundle("preprocess", "css")

    texts = traitlets.List(traitlets.Unicode()).tag(sync=True)
    sequence_length = traitlets.Int(8).tag(sync=True)

    def __init__(
        self, model_or_preprocessor: Any, texts: str | list[str] = "Hello", sequence_length: int = 8
    ) -> None:
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        super().__init__(texts=texts, sequence_length=int(sequence_length))
        self.preprocessor = preprocessor_of(model_or_preprocessor)
        self._start_service(
            model=lambda: self.preprocessor,
            sequence=lambda text: text_sequence(
                self.preprocessor.tokenizer, "\n".join(self.texts) if text is None else text
            ),
            batch=lambda: list(self.texts),
        )

    @traitlets.validate("sequence_length")
    def _valid_length(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 1 <= value <= 4096:
            raise traitlets.TraitError(f"sequence_length must be between 1 and 4096, got {value}")
        return value

    @property
    def table(self) -> inspect.PreprocessTable:
        """The current table as numpy-level data.

        Example:
            >>> PreprocessorInspector(model, "Hello", 6).table.token_ids  # doctest: +SKIP
            array([[128000,   9906, 128009,      0,      0,      0]], dtype=int32)
        """
        return inspect.preprocess(
            self.preprocessor, self.texts, sequence_length=self.sequence_length
        )
