"""`AttentionView`: where each head looks, for a text or a whole chat, one layer at a time."""

from __future__ import annotations

from typing import Any

import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle


class AttentionView(InspectorWidget):
    """Attention probabilities from the explicit-softmax path, drawn on canvas.

    A T x T heatmap of one head or the head average (zoom with the wheel, pan by dragging, a
    down-sampled overview beside it); a layers x heads grid of thumbnails (the "model view") whose
    cells select that head; and the text itself, where hovering a token lights up the tokens it
    attends to. A layer is computed only when the view asks for it and sent as 8-bit codes.

    Args:
        model: a `Llama3CausalLM` (optional with ``chat``).
        text: the text to look at (when there is no chat).
        chat: a `ChatWidget` or `ChatState`: the view follows its conversation.

    Example:
        >>> from kerasllm_widget import AttentionView
        >>> AttentionView(model, text="The cat sat on the mat because it was tired.")  # doctest: +SKIP
        >>> AttentionView(chat=chat)  # the conversation of a ChatWidget  # doctest: +SKIP
    """

    _esm = bundle("attention")
    _css = bundle("attention", "css")

    text = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(-1).tag(sync=True)  # -1: the average over heads
    follows_chat = traitlets.Bool(False).tag(sync=True)

    def __init__(self, model: Any = None, text: str | None = None, chat: Any = None) -> None:
        super().__init__(text=text or "", follows_chat=chat is not None and text is None)
        self._follow(model, chat)

    def _conversation_changed(self) -> None:
        super()._conversation_changed()
        self.service.refresh()  # the background forward pass moves on to the new conversation

    def maps(self) -> inspect.AttentionMaps:
        """`AttentionMaps` of what the view shows, for the same numbers in code.

        Example:
            >>> view.maps().head(view.layer, 0).shape  # doctest: +SKIP
            (42, 42)
        """
        sequence = self.source.sequence(None if self.follows_chat else self.text)
        return inspect.AttentionMaps(self.source.model(), sequence.ids)
