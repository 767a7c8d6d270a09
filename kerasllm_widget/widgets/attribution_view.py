"""`AttributionView`: which earlier tokens pushed the model towards a token, for a text or a chat."""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.generation import settings
from kerasllm_widget.widgets.attribution_requests import MAX_STEPS
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle


class AttributionView(InspectorWidget):
    """The tokens of a text (or a chat's conversation); clicking one colours every earlier token
    by how much it pushed the model towards the clicked one (`inspect.attribution`): one hue for
    tokens that raised its log-probability, another for those that lowered it, white for none,
    with a legend of the scale's largest magnitude. Hovering a token shows its score.

    The method switch picks gradient x input, integrated gradients (``steps`` midpoints; long
    runs report their progress and have a Stop button) or attention rollout. The chat
    template's special tokens are hidden unless the "special tokens" box is ticked.

    Args:
        model: a `Llama3CausalLM` (optional with ``chat``).
        text: the text to look at (when there is no chat).
        chat: a `ChatWidget` or `ChatState`: the view follows its conversation.
        method: ``"grad_x_input"``, ``"integrated_gradients"`` or ``"attention_rollout"``.
        steps: integrated-gradient steps (1 to 4096).

    Example:
        >>> from kerasllm_widget import AttributionView
        >>> AttributionView(model, text="The capital of France is Paris")  # doctest: +SKIP
        >>> AttributionView(chat=chat, method="integrated_gradients", steps=64)  # doctest: +SKIP
    """

    _esm = bundle("attribution")
    _css = bundle("attribution", "css")

    text = traitlets.Unicode("").tag(sync=True)
    follows_chat = traitlets.Bool(False).tag(sync=True)
    method = traitlets.Unicode("grad_x_input").tag(sync=True)
    steps = traitlets.Int(32).tag(sync=True)

    def __init__(
        self,
        model: Any = None,
        text: str | None = None,
        chat: Any = None,
        method: str = "grad_x_input",
        steps: int = 32,
    ) -> None:
        super().__init__(
            text=text or "",
            follows_chat=chat is not None and text is None,
            method=method,
            steps=steps,
        )
        self._follow(model, chat)

    @traitlets.validate("method")
    def _check_method(self, proposal: Any) -> str:
        value = proposal["value"]
        if value not in inspect.ATTRIBUTION_METHODS:
            allowed = "use one of " + ", ".join(repr(m) for m in inspect.ATTRIBUTION_METHODS)
            raise traitlets.TraitError(
                str(settings.GenerationSettingError("method", value, allowed))
            )
        return value

    @traitlets.validate("steps")
    def _check_steps(self, proposal: Any) -> int:
        try:
            return settings.check_count(proposal["value"], "steps", 1, MAX_STEPS)
        except settings.GenerationSettingError as error:
            raise traitlets.TraitError(str(error)) from None

    def scores(self, target_position: int) -> np.ndarray:
        """The scores the view colours by when ``target_position`` is clicked, for code.

        Example:
            >>> view.scores(12)  # one per token before position 12  # doctest: +SKIP
        """
        sequence = self.source.sequence(None if self.follows_chat else self.text)
        return inspect.attribution(
            self.source.model(), sequence.ids, target_position, method=self.method, steps=self.steps
        )
