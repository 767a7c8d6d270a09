"""`StepMode`: the Probabilities tab's step mode, one token at a time, for an `InspectorService`.

The user watches the model's distribution for the next token, accepts the sampler's proposal or
picks another token, undoes, or lets the model finish. The session (an `inspect.StepSession`)
and the pending proposal live here; the service runs each ``step.request`` on its worker thread
and sends the ``step.state`` this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kerasllm_widget import inspect
from kerasllm_widget.inspect.pieces import piece
from kerasllm_widget.widgets.envelope import finite

STEP_TOP_K = 10


class StepMode:
    """The step-mode session of one inspector service.

    Args:
        step_prompt: ``step_prompt(text)`` -> the prompt ids a new session starts from.
        settings: returns the widget's sampling settings, for the proposals and ``finish``.

    Example:
        >>> steps = StepMode(lambda text: prompt_ids, lambda: {"temperature": 0.0})  # doctest: +SKIP
        >>> steps.act(model, "start", text=None)["proposal"]  # doctest: +SKIP
    """

    def __init__(
        self,
        step_prompt: Callable[[str | None], np.ndarray],
        settings: Callable[[], dict],
    ) -> None:
        self._step_prompt = step_prompt
        self._settings = settings
        self._session: inspect.StepSession | None = None
        self._proposal: int | None = None

    def act(
        self, model: Any, action: str, token_id: int | None = None, text: str | None = None
    ) -> dict[str, Any]:
        """Does ``action`` (one of `inspect_protocol.STEP_ACTIONS`) and returns the fields of
        the ``step.state`` answer. ``start`` and ``reset`` begin a new session from
        ``step_prompt(text)``; ``choose`` takes ``token_id``."""
        if action in ("start", "reset") or self._session is None:
            self._session = inspect.StepSession(model, self._step_prompt(text), top_k=STEP_TOP_K)
            self._proposal = None
        session = self._session
        if action == "undo":
            session.undo()
            self._proposal = None
        elif action == "accept":
            if self._proposal is None:
                self._proposal = self._propose(session)
            session.choose(self._proposal, proposed_id=self._proposal)
            self._proposal = None
        elif action == "choose":
            if token_id is None:
                raise ValueError("step.request 'choose' needs an integer token_id")
            session.choose(token_id, proposed_id=self._proposal)
            self._proposal = None
        elif action == "propose":
            self._proposal = None
        elif action == "finish":
            self._finish(session)
            self._proposal = None
        if not session.finished and self._proposal is None:
            self._proposal = self._propose(session)
        return self._state(session)

    def _sampling(self) -> dict:
        """The sampler settings of the widget, as `StepSession.propose` and `finish` take them."""
        settings = self._settings()
        return {
            "temperature": float(settings.get("temperature", 0.7)),
            "top_k": settings.get("top_k") or None,
            "top_p": settings.get("top_p"),
            "min_p": settings.get("min_p") or None,
            "repetition_penalty": settings.get("repetition_penalty"),
            "seed": settings.get("seed"),
        }

    def _propose(self, session: inspect.StepSession) -> int:
        return session.propose(**self._sampling())

    def _finish(self, session: inspect.StepSession) -> None:
        limit = int(self._settings().get("max_new_tokens") or 128)
        session.finish(max_new_tokens=limit - len(session.steps), **self._sampling())

    def _state(self, session: inspect.StepSession) -> dict[str, Any]:
        tokenizer = session.tokenizer
        tail = session.prompt_ids[-16:]
        distribution = None if session.finished else session.distribution().to_dict()
        proposal = None
        if self._proposal is not None and distribution is not None:
            probs = dict(zip(distribution["token_ids"], distribution["probs"], strict=True))
            proposal = {
                "token_id": self._proposal,
                "piece": piece(tokenizer, self._proposal),
                "prob": probs.get(self._proposal),
            }
        steps = []
        for step in session.steps:
            record = step.to_dict()
            record["prob"], record["entropy"] = finite(step.prob), finite(step.entropy)
            steps.append(record)
        return {
            "prompt_tail": [piece(tokenizer, i) for i in tail],
            "prompt_length": len(session.prompt_ids),
            "steps": steps,
            "distribution": distribution,
            "proposal": proposal,
            "finished": session.finished,
            "text": session.text,
        }
