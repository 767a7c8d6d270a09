"""`ProbabilitiesView`: how sure the model was of every token, and generation one step at a time."""

from __future__ import annotations

from typing import Any

import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.widgets._chat_source import ChatSource
from kerasllm_widget.widgets.inspector_widget import InspectorWidget, bundle


class ProbabilitiesView(InspectorWidget):
    """Each token of a text (or a chat) coloured by the probability the model gave it, or by the
    entropy of the distribution it came from; clicking a token shows the alternatives as bars.

    The step mode builds a reply one token at a time from the text (or the chat's next prompt):
    it shows the next-token distribution and the sampler's pick, the user accepts it or clicks
    another token, and generation goes on from that choice ("Finish" lets the engine write the
    rest). Sampling settings are traitlets, as on the ChatWidget.

    Args:
        model: a `Llama3CausalLM` (optional with ``chat``).
        text: the text to score, and the prompt of the step mode.
        chat: a `ChatWidget` or `ChatState` to follow instead.

    Example:
        >>> from kerasllm_widget.widgets.probabilities_view import ProbabilitiesView
        >>> ProbabilitiesView(model, text="The capital of France is")  # doctest: +SKIP
    """

    _esm = bundle("probabilities")
    _css = bundle("probabilities", "css")

    text = traitlets.Unicode("").tag(sync=True)
    follows_chat = traitlets.Bool(False).tag(sync=True)
    temperature = traitlets.Float(0.7).tag(sync=True)
    top_p = traitlets.Float(0.9).tag(sync=True)
    top_k = traitlets.Int(50).tag(sync=True)
    seed = traitlets.Int(None, allow_none=True).tag(sync=True)
    max_new_tokens = traitlets.Int(64).tag(sync=True)

    def __init__(
        self, model: Any = None, text: str = "", chat: Any = None, **sampling: Any
    ) -> None:
        super().__init__(text=text, follows_chat=chat is not None and not text, **sampling)
        self.source = ChatSource(model, chat, text=lambda: self.text)
        self._start_service(
            model=self.source.model,
            sequence=lambda t: self.source.sequence(
                t if t is not None or self.follows_chat else self.text
            ),
            step_prompt=lambda t: self.source.prompt_ids(
                t if t is not None or self.follows_chat else self.text
            ),
            settings=self._sampling,
        )
        self.source.watch(self._conversation_changed)

    def _conversation_changed(self) -> None:
        self.revision += 1

    def _sampling(self) -> dict:
        names = ("temperature", "top_p", "top_k", "seed", "max_new_tokens")
        return {name: getattr(self, name) for name in names}

    def scores(self) -> inspect.SequenceScores:
        """The numbers the view colours by, for code.

        Example:
            >>> view.scores().probs  # doctest: +SKIP
        """
        sequence = self.source.sequence(None if self.follows_chat else self.text)
        return inspect.score(self.source.model(), sequence.ids)
