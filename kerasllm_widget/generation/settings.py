"""One validation of generation settings, shared by `generate`, `stream`, `ChatState`, `Sampler`
and the chat widget's traits.

Every refusal is a `GenerationSettingError` (a `ValueError`) naming the argument, the value it
got and what is allowed, so a typo never turns into a silent reinterpretation (``nan`` acting
as 1.0, ``max_new_tokens=0`` giving 256 tokens, a bare stop string split into characters).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kerasllm_widget.checkpoints.checkpoint import sampling_generation_config

__all__ = [
    "MAX_NEW_TOKENS_LIMIT",
    "GenerationSettingError",
    "check_count",
    "check_max_new_tokens",
    "check_probability",
    "check_seed",
    "check_stop_strings",
    "check_temperature",
    "check_token_ids",
    "check_top_k",
    "sampling_defaults",
]

# The most new tokens one request may ask for: far past any context a Llama has (128K), so only
# a typo (10**9) is refused, before it reserves memory or runs for hours.
MAX_NEW_TOKENS_LIMIT = 1 << 20


class GenerationSettingError(ValueError):
    """A generation setting outside what is allowed: names the argument, the value and the range.

    Example:
        >>> check_temperature(float("nan"))
        Traceback (most recent call last):
        ...
        kerasllm_widget.generation.settings.GenerationSettingError: temperature=nan is not allowed: use a finite number >= 0 (0 picks the most likely token).
    """

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={_show(value)} is not allowed: {allowed}.")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, bool
    )


def check_count(value: Any, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``.

    Example:
        >>> check_count(3, "top_k_alternatives")
        3
    """
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise GenerationSettingError(name, value, f"use a whole number >= {minimum}{upper}")
    return int(value)


def check_max_new_tokens(value: Any, name: str = "max_new_tokens") -> int:
    """A number of new tokens: a whole number from 1 to `MAX_NEW_TOKENS_LIMIT`.

    Example:
        >>> check_max_new_tokens(64)
        64
    """
    return check_count(value, name, 1, MAX_NEW_TOKENS_LIMIT)


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A finite temperature >= 0.

    Example:
        >>> check_temperature(0.7)
        0.7
    """
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise GenerationSettingError(
            name, value, "use a finite number >= 0 (0 picks the most likely token)"
        )
    return float(value)


def check_probability(
    value: Any, name: str, *, open_below: bool = True, upper: float = 1.0
) -> float:
    """A probability in ``(0, upper]`` (``open_below``) or ``[0, upper]``.

    Example:
        >>> check_probability(0.9, "top_p")
        0.9
    """
    low_ok = (value > 0) if open_below else (value >= 0)
    if not _is_real(value) or not math.isfinite(value) or not low_ok or value > upper:
        bracket = "(0" if open_below else "[0"
        raise GenerationSettingError(name, value, f"use a number in {bracket}, {upper:g}]")
    return float(value)


def check_top_k(value: Any, name: str = "top_k") -> int:
    """top-k: a whole number >= 0 (0 turns it off).

    Example:
        >>> check_top_k(50)
        50
    """
    if not _is_int(value) or value < 0:
        raise GenerationSettingError(name, value, "use a whole number >= 0 (0 turns it off)")
    return int(value)


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0 (a repetition penalty).

    Example:
        >>> check_positive(1.1, "repetition_penalty")
        1.1
    """
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise GenerationSettingError(name, value, "use a finite number > 0 (1 turns it off)")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int | None:
    """A seed: None (a fresh one each time) or a whole number in ``[0, 2**32)``.

    Example:
        >>> check_seed(0)
        0
    """
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value < 2**32:
        raise GenerationSettingError(name, value, "use None or a whole number in [0, 2**32)")
    return int(value)


def check_stop_strings(value: Any, name: str = "stop_strings") -> list[str]:
    """Stop strings: None, one string, or a list of strings (never split into characters).

    Example:
        >>> check_stop_strings("User:")
        ['User:']
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise GenerationSettingError(name, value, "use a string or a list of strings")
    strings = list(value)
    if not all(isinstance(s, str) for s in strings):
        raise GenerationSettingError(name, value, "use a string or a list of strings")
    return [s for s in strings if s]


def check_token_ids(
    ids: Sequence[Any] | np.ndarray, vocabulary_size: int, name: str = "token_ids"
) -> list[int]:
    """Token ids as a list of ints, each in ``[0, vocabulary_size)``.

    Example:
        >>> check_token_ids([1, 2, 3], 32)
        [1, 2, 3]
    """
    allowed = f"token ids are whole numbers from 0 to {vocabulary_size - 1} (the vocabulary)"
    try:
        values = np.asarray(ids).reshape(-1)
    except ValueError:  # ragged nesting
        raise GenerationSettingError(name, ids, "use a flat list of token ids") from None
    if values.dtype.kind in "iu":
        bad = np.flatnonzero((values < 0) | (values >= vocabulary_size))
        if bad.size:
            first = int(bad[0])
            raise GenerationSettingError(f"{name}[{first}]", int(values[first]), allowed)
        return values.astype(np.int64).tolist()
    for index, value in enumerate(values.tolist()):
        if not _is_int(value) or not 0 <= value < vocabulary_size:
            raise GenerationSettingError(f"{name}[{index}]", value, allowed)
    return [int(v) for v in values.tolist()]


def sampling_defaults(config: Any) -> dict[str, Any]:
    """A checkpoint's sampling defaults as generation settings, the way transformers reads them:
    ``do_sample: false`` is greedy (``temperature=0``); otherwise each knob the config sets.
    Values outside what the settings allow are left out.

    Example:
        >>> sampling_defaults({"do_sample": True, "temperature": 0.6, "top_p": 0.9})
        {'temperature': 0.6, 'top_p': 0.9}
        >>> sampling_defaults({"do_sample": False, "temperature": 0.6})
        {'temperature': 0.0}
    """
    config = sampling_generation_config(config)
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    checks = {
        "temperature": check_temperature,
        "top_p": check_probability,
        "top_k": check_top_k,
        "min_p": lambda value, name: check_probability(value, name, open_below=False),
        "repetition_penalty": check_positive,
    }
    out = {}
    for key, check in checks.items():
        if key in config:
            try:
                out[key] = check(config[key], key)
            except GenerationSettingError:
                continue
    return out
