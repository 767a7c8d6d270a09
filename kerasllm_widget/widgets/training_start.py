"""The weights a ``fit`` started from, scored against the current ones on the monitor's samples.

At each epoch end `TrainingMonitor` scores its sample prompt and the reply just generated under
the starting weights and under the current ones: the per-token log-probability of each reply
token under both, and the KL divergence of the two next-token distributions. One model object
serves both: the forward reads its variables through a `keras.StatelessScope` that maps some of
them to their starting values, so nothing is copied into a second model and nothing recompiles
(the program takes the variable values as arguments; see `inspect.hooks.model_program`).

- LoRA run: the starting weights are the base model without the adapters, i.e. every
  ``lora_kernel_b`` mapped to zeros (Keras' Dense adds ``alpha / rank * A @ B``). It costs one
  zero array per adapter, a few hundred kilobytes for SmolLM2.
- Full fine-tune: a copy of every trainable variable as it was when ``fit`` began, kept only
  when asked (``TrainingMonitor(compare_start=True)``), since it doubles the weights' memory
  (about 540 MB more for SmolLM2-135M in float32, 5 GB for a 1B model).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.models.llama3_lora import lora_layers

__all__ = ["StartingWeights"]


class StartingWeights:
    """The starting weights of one ``fit``, as a mapping of variables to starting values.

    Example:
        >>> start = StartingWeights.capture(model, copy_full=False)  # doctest: +SKIP
        >>> start.compare(model, prompt="Who are you?", reply="I am Kera.")  # doctest: +SKIP
        {'pieces': [...], 'logprob_start': [...], 'logprob_now': [...], 'kl': [...], ...}
    """

    def __init__(self, mapping: list[tuple[Any, Any]], kind: str) -> None:
        self.mapping = mapping
        self.kind = kind  # "lora" (the base model) or "copy" (the weights at fit's start)

    @classmethod
    def capture(cls, model: Any, copy_full: bool) -> StartingWeights | None:
        """What ``fit`` starts from: None when neither LoRA is on nor ``copy_full`` asked."""
        backbone = getattr(model, "backbone", model)
        adapters = lora_layers(backbone)
        if adapters:
            zeros = [
                (
                    dense.lora_kernel_b,
                    np.zeros(dense.lora_kernel_b.shape, dense.lora_kernel_b.dtype),
                )
                for dense in adapters.values()
            ]
            return cls(zeros, "lora")
        if copy_full:
            values = [
                (v, np.array(keras.ops.convert_to_numpy(v.value)))
                for v in model.trainable_variables
            ]
            return cls(values, "copy")
        return None

    def compare(self, model: Any, prompt: Any, reply: str) -> dict | None:
        """``prompt`` + ``reply`` scored under the starting and the current weights: for each
        reply token its piece, its log-probability under both, and the KL(start || now) of the
        distributions it was drawn from (JSON-ready, rounded to 4 decimals). None when the
        reply is empty."""
        preprocessor = model.preprocessor
        prompt_ids = np.asarray(preprocessor.generate_preprocess(prompt)["token_ids"]).reshape(-1)
        reply_ids = np.asarray(preprocessor.tokenizer(reply)).reshape(-1) if reply else np.zeros(0)
        if reply_ids.size == 0:
            return None
        ids = np.concatenate([prompt_ids, reply_ids]).astype(np.int32)
        now = inspect.run_with_hooks(model, ids)[0]
        with keras.StatelessScope(state_mapping=self.mapping):
            start = inspect.run_with_hooks(model, ids)[0]
        result = inspect.compare_logits(start, now, ids, top_k=1)
        first = prompt_ids.size - 1  # the step that predicts the first reply token
        tokenizer = preprocessor.tokenizer
        return {
            "pieces": [piece(tokenizer, int(i)) for i in reply_ids],
            "logprob_start": _rounded(result.logprobs_a[first:]),
            "logprob_now": _rounded(result.logprobs_b[first:]),
            "kl": _rounded(result.kl[first:]),
            "mean_kl": round(float(result.kl[first:].mean()), 4),
            "start": self.kind,
        }


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]
