"""The Attribution view's kernel side (`attribution_requests` behind the inspector service),
driven through the comm as the JS view drives it: the same scores as `inspect.attribution` on a
real SmolLM2 chat, integrated gradients reporting each batch, Stop, and newer requests first."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from inspect_support import FrontEnd, decode, smollm2_model, tiny_chat_model

from kerasllm_widget import inspect
from kerasllm_widget.inspect import attributions
from kerasllm_widget.widgets import inspect_protocol as P
from kerasllm_widget.widgets.inspected_sequence import conversation_sequence

IG = "integrated_gradients"


@pytest.fixture(scope="module")
def smollm2_chat():
    """A ChatWidget on the real SmolLM2 after one short greedy exchange, and its conversation."""
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(smollm2_model(), temperature=0.0, max_new_tokens=8)
    chat.send("What is the capital of France?").result(timeout=300)
    yield chat, conversation_sequence(chat.chat_state)
    chat.close()


def _front(chat) -> FrontEnd:
    return FrontEnd(chat, wait_idle=chat._inspectors.wait_idle)


def _wait_for(predicate, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _reply_position(opened: dict) -> int:
    """The last token of the reply: what the view asks about when that token is clicked."""
    return max(i for i, role in enumerate(opened["roles"]) if role == "assistant")


@pytest.mark.slow
def test_the_service_gives_inspect_attributions_scores_for_a_chat(smollm2_chat):
    chat, sequence = smollm2_chat
    model = chat.chat_state.model
    front = _front(chat)
    opened, _ = front.ask(P.ATTRIBUTION_OPEN, text=None)
    assert opened["kind"] == P.ATTRIBUTION_SEQUENCE
    assert opened["sequence_id"] == sequence.sequence_id and opened["pieces"] == sequence.pieces
    assert opened["methods"] == list(inspect.ATTRIBUTION_METHODS)
    special = {p for p, s in zip(opened["pieces"], opened["special"], strict=True) if s}
    assert special == {"<|im_start|>", "<|im_end|>"}  # the template's markers, nothing else
    position = _reply_position(opened)
    for method in ("grad_x_input", "attention_rollout"):
        answer, buffers = front.ask(
            P.ATTRIBUTION_REQUEST,
            sequence_id=opened["sequence_id"],
            target_position=position,
            method=method,
        )
        assert answer["kind"] == P.ATTRIBUTION_RESULT, answer
        assert answer["target_id"] == int(sequence.ids[position]) and answer["method"] == method
        scores = decode(answer["scores"], buffers)
        expected = inspect.attribution(model, sequence.ids, position, method=method)
        assert scores.dtype == np.float32 and scores.shape == (position,)
        np.testing.assert_array_equal(scores, expected)
    # A position out of range is refused, naming it.
    answer, _ = front.ask(
        P.ATTRIBUTION_REQUEST,
        sequence_id=opened["sequence_id"],
        target_position=len(sequence),
        method="grad_x_input",
    )
    assert answer["code"] == P.ERROR_BAD_REQUEST and "target_position" in answer["message"]


@pytest.mark.slow
def test_integrated_gradients_report_each_batch_and_stop_between_batches(smollm2_chat, monkeypatch):
    chat, sequence = smollm2_chat
    model = chat.chat_state.model
    history = chat.history
    front = _front(chat)
    opened, _ = front.ask(P.ATTRIBUTION_OPEN, text=None)
    position = _reply_position(opened)
    # Two steps a pass (a long conversation's budget, at this one's cost): 6 steps in 3 passes.
    per_step = attributions._bytes_per_step(model.backbone, len(sequence))
    monkeypatch.setattr(attributions, "_GRADIENT_BUDGET_BYTES", 2 * per_step)
    steps, batch = 6, 2
    assert attributions.steps_per_batch(model.backbone, len(sequence), steps) == batch

    answer_id = front.request(
        P.ATTRIBUTION_REQUEST,
        sequence_id=opened["sequence_id"],
        target_position=position,
        method=IG,
        steps=steps,
    )
    assert front.wait_idle(600)
    answers = front.answers(answer_id)
    progress = [m for m, _ in answers if m["kind"] == P.ATTRIBUTION_PROGRESS]
    assert [m["done"] for m in progress] == [0, *range(batch, steps, batch), steps]
    assert {m["total"] for m in progress} == {steps}
    result, buffers = answers[-1]
    assert result["kind"] == P.ATTRIBUTION_RESULT and result["steps"] == steps
    expected = inspect.attribution(model, sequence.ids, position, method=IG, steps=steps)
    np.testing.assert_array_equal(decode(result["scores"], buffers), expected)

    # Stop after the first batch: the run ends there and says so; nothing else changes.
    stopped_id = front.request(
        P.ATTRIBUTION_REQUEST,
        sequence_id=opened["sequence_id"],
        target_position=position - 1,
        method=IG,
        steps=4096,
    )
    _wait_for(lambda: any(m.get("done", 0) > 0 for m, _ in front.answers(stopped_id)))
    front.request(P.ATTRIBUTION_STOP)
    assert front.wait_idle(600)
    last = front.answers(stopped_id)[-1][0]
    assert last["kind"] == P.INSPECT_ERROR and last["code"] == P.ERROR_STOPPED
    assert re.fullmatch(r"stopped after \d+ of 4096 steps", last["message"])
    assert not any(m["kind"] == P.ATTRIBUTION_RESULT for m, _ in front.answers(stopped_id))
    assert chat.history == history
    answer, _ = front.ask(
        P.ATTRIBUTION_REQUEST,
        sequence_id=opened["sequence_id"],
        target_position=position,
        method="grad_x_input",
    )
    assert answer["kind"] == P.ATTRIBUTION_RESULT  # the next request runs as usual


def test_a_newer_request_supersedes_older_ones_and_a_changed_text_is_refused(monkeypatch):
    from kerasllm_widget.widgets.attribution_view import AttributionView

    view = AttributionView(tiny_chat_model(), text="The cat sat on the mat. The dog slept.")
    front = FrontEnd(view)
    opened, _ = front.ask(P.ATTRIBUTION_OPEN, text=None)
    assert opened["special"] == [True] + [False] * (len(opened["pieces"]) - 1)  # the start token
    gradient = {"sequence_id": opened["sequence_id"], "method": "grad_x_input"}
    integrated = {"sequence_id": opened["sequence_id"], "method": IG}

    # Three requests while the worker is busy: only the newest runs.
    busy = threading.Event()
    view.service.submit(
        P.Request("attribution.hold", "", {}), lambda request: busy.wait(60) and None
    )
    first = front.request(P.ATTRIBUTION_REQUEST, target_position=3, steps=64, **integrated)
    second = front.request(P.ATTRIBUTION_REQUEST, target_position=4, **gradient)
    third = front.request(P.ATTRIBUTION_REQUEST, target_position=5, **gradient)
    busy.set()
    assert front.wait_idle(120)
    for request_id in (first, second):
        assert front.answers(request_id)[-1][0]["code"] == P.ERROR_SUPERSEDED
    answer, buffers = front.answers(third)[-1]
    np.testing.assert_array_equal(decode(answer["scores"], buffers), view.scores(5))

    # One running (one step a batch here) ends at its next batch when a newer one comes.
    backbone = view.source.model().backbone
    per_step = attributions._bytes_per_step(backbone, len(opened["pieces"]))
    monkeypatch.setattr(attributions, "_GRADIENT_BUDGET_BYTES", per_step)
    running = front.request(P.ATTRIBUTION_REQUEST, target_position=3, steps=4096, **integrated)
    _wait_for(lambda: any(m.get("done", 0) > 0 for m, _ in front.answers(running)))
    newer = front.request(P.ATTRIBUTION_REQUEST, target_position=4, **gradient)
    assert front.wait_idle(300)
    last = front.answers(running)[-1][0]
    assert last["code"] == P.ERROR_SUPERSEDED and last["kind"] == P.INSPECT_ERROR
    assert front.answers(newer)[-1][0]["kind"] == P.ATTRIBUTION_RESULT

    # The text changed and the view opened it again: a request about the old one is refused.
    view.text = "Another text entirely."
    reopened, _ = front.ask(P.ATTRIBUTION_OPEN, text=None)
    assert reopened["sequence_id"] != opened["sequence_id"]
    answer, _ = front.ask(P.ATTRIBUTION_REQUEST, target_position=2, **gradient)
    assert answer["code"] == P.ERROR_SUPERSEDED
    view.close()


def test_bad_settings_and_requests_are_refused_naming_them():
    import traitlets

    from kerasllm_widget.widgets.attribution_view import AttributionView

    view = AttributionView(tiny_chat_model(), text="Hello there")
    with pytest.raises(traitlets.TraitError, match=r"method='saliency' is not allowed: use one of"):
        view.method = "saliency"
    with pytest.raises(traitlets.TraitError, match=r"steps=0 is not allowed"):
        view.steps = 0
    assert (view.method, view.steps) == ("grad_x_input", 32)
    with pytest.raises(P.ProtocolError, match="'target_position'"):
        P.parse_request(
            {"kind": P.ATTRIBUTION_REQUEST, "id": "a", "sequence_id": "s", "method": IG}
        )
    front = FrontEnd(view)
    opened, _ = front.ask(P.ATTRIBUTION_OPEN, text=None)
    answer, _ = front.ask(
        P.ATTRIBUTION_REQUEST, sequence_id=opened["sequence_id"], target_position=1, method="x"
    )
    assert answer["code"] == P.ERROR_BAD_REQUEST and "method='x'" in answer["message"]
    view.close()
