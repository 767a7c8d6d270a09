"""The logit-lens view's kernel side (`LogitLensView`, the ChatWidget's Lens tab), driven through
their comms as the JS view drives them, against `inspect.logit_lens` on the real SmolLM2."""

from __future__ import annotations

import time

import numpy as np
import pytest
from inspect_support import FrontEnd, decode, smollm2_model, tiny_chat_model

from kerasllm_widget import inspect
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.widgets import inspect_protocol as P

TEXT = "The Eiffel Tower is in the city of Paris. The capital of France is"


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_model()


def _float16_close(sent: np.ndarray, exact: np.ndarray) -> None:
    """float16 keeps 11 significant bits: a relative error of at most 2**-11, and below its
    smallest normal number (6.1e-5) an absolute one of at most half its step, 2**-25."""
    assert sent.dtype == np.float16
    error = np.abs(sent.astype(np.float64) - exact.astype(np.float64))
    assert np.all(error <= 2.0**-11 * np.abs(exact) + 2.0**-25), error.max()


def test_lens_view_sends_the_lens_of_its_text_in_16_bits(smollm2):
    from kerasllm_widget import LogitLensView

    view = LogitLensView(smollm2, text=TEXT)
    front = FrontEnd(view)
    answer, buffers = front.ask(P.LENS_REQUEST, text=None)
    assert answer["kind"] == P.LENS_RESULT
    arrays = {name: decode(header, buffers) for name, header in answer["arrays"].items()}
    expected = inspect.logit_lens(smollm2, arrays["token_ids"], top_k=5)
    layers, length = expected.num_layers, len(expected.token_ids)
    assert (answer["num_layers"], answer["top_k"], len(answer["pieces"])) == (layers, 5, length)
    assert "".join(answer["pieces"]).replace("␣", " ") == TEXT  # SmolLM2 adds no start token

    # Ids exact and as int32; probabilities and entropies the pass's own, rounded to float16.
    assert arrays["top_ids"].dtype == np.int32 and arrays["target_rank"].dtype == np.int32
    np.testing.assert_array_equal(arrays["top_ids"], expected.top_ids)
    _float16_close(arrays["top_probs"], expected.top_probs)
    _float16_close(arrays["entropy"], expected.entropy)
    # What the chart follows: the next token, and after the last one the model's own choice.
    choice = expected.top_ids[-1, -1, 0]
    np.testing.assert_array_equal(arrays["target_ids"], np.r_[expected.token_ids[1:], choice])
    np.testing.assert_array_equal(arrays["target_rank"][:, :-1], expected.target_rank)
    np.testing.assert_array_equal(arrays["target_rank"][:, -1], expected.final_rank)
    assert arrays["target_rank"][-1, -1] == 0
    _float16_close(arrays["target_probs"][:, :-1], expected.target_prob)
    _float16_close(arrays["target_probs"][:, -1], expected.final_prob)
    # The next token's probability is one of the top k wherever its rank is below k.
    inside = arrays["target_rank"][:, :-1] < 5
    at_rank = np.take_along_axis(
        expected.top_probs[:, :-1], np.minimum(expected.target_rank, 4)[..., None], -1
    )[..., 0]
    np.testing.assert_allclose(expected.target_prob[inside], at_rank[inside], rtol=1e-4)
    # Once the model is sure, it is sure of Paris (the last layers of "...the city of").
    paris = answer["pieces"].index("␣Paris")
    assert arrays["target_rank"][-1, paris - 1] == 0
    # Every id shown has its text, decoded once.
    tokenizer = smollm2.preprocessor.tokenizer
    shown = set(np.unique(arrays["top_ids"]).tolist()) | set(arrays["token_ids"].tolist())
    assert {int(i) for i in answer["labels"]} == shown
    assert answer["labels"][str(choice)] == piece(tokenizer, choice)

    # Shown again (another display, a tab shown again): the kept pass, the same bytes, no new
    # pass reported.
    passes = sum(m["kind"] == P.LENS_PROGRESS for m, _ in front.messages)
    again, again_buffers = front.ask(P.LENS_REQUEST, text=None)
    assert again["compute_s"] == answer["compute_s"]
    assert [bytes(b) for b in again_buffers] == [bytes(b) for b in buffers]
    assert sum(m["kind"] == P.LENS_PROGRESS for m, _ in front.messages) == passes == 1
    assert view.lens() is view.service.lens.computed(answer["sequence_id"])
    view.close()


def test_lens_of_nothing_is_refused_as_not_ready(smollm2):
    from kerasllm_widget import LogitLensView

    view = LogitLensView(smollm2, text="")
    answer, _ = FrontEnd(view).ask(P.LENS_REQUEST, text=None)
    assert answer["kind"] == P.INSPECT_ERROR and answer["code"] == P.ERROR_NOT_READY
    assert answer["request_kind"] == P.LENS_REQUEST
    view.close()


def test_chat_lens_follows_the_conversation():
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    tiny = tiny_chat_model()
    chat = ChatWidget(tiny, temperature=0.0, max_new_tokens=4)
    chat.send("Hi there").result(timeout=120)
    front = FrontEnd(chat, wait_idle=chat._inspectors.wait_idle)
    first, buffers = front.ask(P.LENS_REQUEST, text=None)
    assert first["kind"] == P.LENS_RESULT and {"user", "assistant"} <= set(first["roles"])
    top = decode(first["arrays"]["top_ids"], buffers)
    assert top.shape == (tiny.backbone.num_layers, len(first["pieces"]), 5)
    chat.send("And again").result(timeout=120)
    deadline = time.monotonic() + 10
    grown = first
    while grown["sequence_id"] == first["sequence_id"] and time.monotonic() < deadline:
        grown, _ = front.ask(P.LENS_REQUEST, text=None)
    assert len(grown["pieces"]) > len(first["pieces"])
    assert grown["pieces"][: len(first["pieces"])] == first["pieces"]
    chat.close()
