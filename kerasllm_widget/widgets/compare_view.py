"""`CompareView`: a text scored under two models, token by token (`inspect.compare_models`)."""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets

from kerasllm_widget import inspect
from kerasllm_widget.widgets._bundle import bundle
from kerasllm_widget.widgets._worker import GenerationWorker
from kerasllm_widget.widgets.compare_panel import ComparePanel, resolve_model
from kerasllm_widget.widgets.inspected_sequence import text_sequence


class CompareView(anywidget.AnyWidget):
    """``text`` scored under ``model_a`` and ``model_b`` (each a `Llama3CausalLM`, a preset name
    or a ChatWidget; the two share a tokenizer): each token coloured by how much more or less
    likely B found it than A, both models' top-k at a clicked token, and B's greedy
    continuation from there. The same view is the ChatWidget's Compare tab
    (`ChatWidget.compare_with`).

    Example:
        >>> from kerasllm_widget import CompareView
        >>> CompareView(before, after, text="My name is Kera.")  # doctest: +SKIP
    """

    _esm = bundle("compare")
    _css = bundle("compare", "css")

    text = traitlets.Unicode("").tag(sync=True)
    names = traitlets.Dict().tag(sync=True)

    def __init__(self, model_a: Any, model_b: Any, text: str = "") -> None:
        if not isinstance(text, str):
            raise TypeError(f"text={type(text).__name__}: give the text to score as a string.")
        super().__init__(text=text)
        self.model_a = resolve_model(model_a, "model_a")
        self._worker = GenerationWorker(name="kerasllm-compare")
        self._panel = ComparePanel(
            self,
            self._worker,
            model_a=lambda: self.model_a,
            sequence=lambda: text_sequence(self.model_a, self.text),
        )
        self.names = self._panel.set_model_b(resolve_model(model_b, "model_b"))
        self.on_msg(lambda widget, content, buffers: self._panel.handle(content, buffers))

    @property
    def model_b(self) -> Any:
        return self._panel.model_b

    def comparison(self) -> inspect.ModelComparison:
        """The numbers the view colours by, for code.

        Example:
            >>> int(view.comparison().kl.argmax())  # where the models disagree most  # doctest: +SKIP
        """
        ids = text_sequence(self.model_a, self.text).ids
        return inspect.compare_models(self.model_a, self.model_b, ids)

    def close(self) -> None:
        worker = getattr(self, "_worker", None)  # None: __init__ refused its arguments
        if worker is not None:
            worker.close(timeout=2.0)
        super().close()
