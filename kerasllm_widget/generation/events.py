"""Events that `Llama3CausalLM.stream` and `ChatState.stream` yield while a reply is made.

A stream is zero or more `TokenEvent`s followed by exactly one `DoneEvent`. Every event's
``text`` is the new text it adds, so ``for event in model.stream(...): print(event.text, end="")``
prints the reply once; the `DoneEvent` adds none (its ``text`` is "") and names the whole reply
``reply``. The widgets forward these to the browser (see `widgets/protocol.py`), so every field
is plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

StopReason = Literal[
    "stop_token", "stop_string", "max_new_tokens", "cancelled", "context_full", "error"
]


@dataclass
class Alternative:
    """One candidate the model weighed for a position."""

    token_id: int
    text: str  # the token's decoded piece, readable (may be a partial UTF-8 character as U+FFFD)
    prob: float


@dataclass
class TokenEvent:
    """One generated token.

    `text` is the delta to append to the reply; it may be empty while a multi-byte character or a
    possible stop string is held back, and then carries several tokens' worth later.
    """

    index: int  # 0 for the first generated token
    token_id: int
    text: str
    logprob: float  # log-probability of the chosen token under the unmodified model distribution
    top_k: list[Alternative] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DoneEvent:
    """The end of a stream, with why it ended, the whole reply and how fast it went.

    Example:
        >>> DoneEvent("stop_token", "Hi!", [1, 2], 3, 2, 0.1, 30.0, 20.0).text
        ''
    """

    stop_reason: StopReason
    reply: str  # the whole reply (the TokenEvents' texts joined)
    token_ids: list[int]  # the generated ids (without the stop token)
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    dropped_turns: int = 0  # turns ChatState dropped to fit the context (oldest first)
    notice: str = ""  # a sentence for the user when something was dropped or cut short
    # Prompt tokens the engine computed (fewer than prompt_tokens when a kept prefix was reused).
    prefilled_tokens: int = 0

    @property
    def text(self) -> str:
        """The new text of this event, as on every `TokenEvent`: none (the reply is ``reply``)."""
        return ""

    def to_dict(self) -> dict:
        return asdict(self)
