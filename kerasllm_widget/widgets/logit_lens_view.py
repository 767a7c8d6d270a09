"""`LogitLensView`: what the model would say next after each layer, for a text or a whole chat."""

from __future__ import annotations

from typing import Any

import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle


class LogitLensView(InspectorWidget):
    """The logit lens as a layers x positions grid: each cell the top next token after that
    layer, coloured by its probability (or by the entropy there); hovering a cell lists its top
    five; clicking a position charts how the token that came next (at the last position, the
    model's own choice) rises in rank and probability through the layers.

    One lens pass per text or conversation state, computed on the kernel's inspector thread and
    kept: showing it again sends the same arrays (float16 probabilities, int32 ids).

    Args:
        model: a `Llama3CausalLM` (optional with ``chat``).
        text: the text to look at (when there is no chat).
        chat: a `ChatWidget` or `ChatState`: the view follows its conversation.

    Example:
        >>> from kerasllm_widget import LogitLensView
        >>> LogitLensView(model, text="The Eiffel Tower is in the city of")  # doctest: +SKIP
        >>> LogitLensView(chat=chat)  # the conversation of a ChatWidget  # doctest: +SKIP
    """

    _esm = bundle("lens")
    _css = bundle("lens", "css")

    text = traitlets.Unicode("").tag(sync=True)
    follows_chat = traitlets.Bool(False).tag(sync=True)

    def __init__(self, model: Any = None, text: str | None = None, chat: Any = None) -> None:
        super().__init__(text=text or "", follows_chat=chat is not None and text is None)
        self._follow(model, chat)

    def lens(self) -> inspect.LogitLens:
        """The `LogitLens` of what the view shows, for the same numbers in code (the view's own
        pass when it has run, else computed now).

        Example:
            >>> view.lens().top_ids[-1, -1]  # the model's own top 5 after the last token  # doctest: +SKIP
        """
        sequence = self.source.sequence(None if self.follows_chat else self.text)
        computed = self.service.lens.computed(sequence.sequence_id)
        if computed is not None:
            return computed
        return inspect.logit_lens(self.source.model(), sequence.ids, top_k=self.service.lens.top_k)
