"""What every generation engine hands back: the tokens of each step and a request's timings.

Both engines (`engine.GenerationEngine` on JAX, `portable_engine.PortableGenerationEngine` on
other backends) yield these, so they live below both: the engine picks the portable engine in
`engine_for` without the portable engine importing the engine back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

__all__ = ["RequestTimings", "StepOutputs"]


class StepOutputs(NamedTuple):
    """What each generated token comes with ([B, n] or [B, n, K] arrays)."""

    tokens: Any
    logprobs: Any
    alternative_ids: Any
    alternative_logprobs: Any


@dataclasses.dataclass
class RequestTimings:
    """When a request started and made its first and last tokens, and how many it handled.

    Example:
        >>> RequestTimings(generated=3, first_token=1.0, last_token=2.0).decode_tokens_per_s
        2.0
    """

    prompt_tokens: int = 0
    prefilled_tokens: int = (
        0  # what prefill computed (less than prompt_tokens with a reused prefix)
    )
    started: float = 0.0
    first_token: float = 0.0
    last_token: float = 0.0
    generated: int = 0

    @property
    def time_to_first_token_s(self) -> float:
        return max(0.0, self.first_token - self.started) if self.first_token else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        ttft = self.time_to_first_token_s
        return self.prefilled_tokens / ttft if ttft > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        span = self.last_token - self.first_token
        return (self.generated - 1) / span if self.generated > 1 and span > 0 else 0.0
