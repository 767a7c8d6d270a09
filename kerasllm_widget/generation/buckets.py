"""Shapes the engine compiles for: prompt buckets, prefill chunks, cache lengths, stop slots and
decode call sizes. A new length inside a bucket never compiles a new program."""

from __future__ import annotations

__all__ = [
    "CONTINUATION_CHUNK",
    "CONTINUATION_CHUNKS",
    "DECODE_CALL_S",
    "MAX_PREFILL_CHUNK",
    "MIN_CACHE_BUCKET",
    "SHORT_CONTINUATION_CHUNK",
    "cache_length_for",
    "decode_call_tokens",
    "next_power_of_two",
    "prefill_chunks",
    "prompt_bucket",
    "stop_slots",
]

MIN_PROMPT_BUCKET = 16
FINE_BUCKETS_FROM = 64  # above this, prompt buckets are quarter-octave steps, not powers of two
MAX_PREFILL_CHUNK = 512
CONTINUATION_CHUNK = 128  # prefill chunk after a reused prefix (the next turn of a chat)
# A chat turn of at most this many new tokens (most user messages, with the template's tokens
# and the previous reply's end) is prefilled as one chunk of this size: a quarter of the work.
SHORT_CONTINUATION_CHUNK = 32
CONTINUATION_CHUNKS = (SHORT_CONTINUATION_CHUNK, CONTINUATION_CHUNK)
MIN_CACHE_BUCKET = 256
# A decode call runs for about this long: Stop waits for the call being read back and the one in
# flight behind it, so it lands within about twice this.
DECODE_CALL_S = 0.1


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def stop_slots(count: int) -> int:
    """How many stop-id slots (padded with -1) a compiled program has for ``count`` stop ids: at
    least 8, then powers of two. Requests and `GenerationEngine.precompile` both size them here:
    a model with more than 8 stop ids once found none of the programs compiled ahead for its
    chat (they had 8 slots, its turns 16) and compiled every turn in the foreground.

    Example:
        >>> [stop_slots(n) for n in (0, 1, 8, 9, 17)]
        [8, 8, 8, 16, 32]
    """
    return max(8, next_power_of_two(count))


def prompt_bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The padded length a prompt of ``length`` tokens is prefilled at: a power of two up to
    `FINE_BUCKETS_FROM`, then quarter steps between powers of two (80, 96, 112, 128, 160, ...).

    Prefill time is about proportional to the padded length (on a CPU the products run at a
    fixed rate per row), so a 100-token prompt at 112 rather than 128 is ~12% faster; the price
    is at most four programs per doubling instead of one.

    Example:
        >>> [prompt_bucket(n) for n in (1, 16, 17, 64, 65, 100, 129, 300)]
        [16, 16, 32, 64, 80, 112, 160, 320]
    """
    bucket = max(minimum, next_power_of_two(length))
    if bucket <= FINE_BUCKETS_FROM:
        return bucket
    step = bucket // 8  # a quarter of the octave below `bucket`
    return -(-int(length) // step) * step


def decode_call_tokens(step_s: float | None, previous: int, most: int) -> int:
    """Tokens for the next decode call: doubling from 1 (the second token shows fast), and no
    more than `DECODE_CALL_S` worth at the measured seconds per step (so Stop lands soon), nor
    more than ``most`` (the compiled chunk).

    Example:
        >>> [decode_call_tokens(None, n, 16) for n in (0, 1, 2, 8, 16)]
        [1, 2, 4, 16, 16]
        >>> decode_call_tokens(0.04, 8, 16), decode_call_tokens(0.002, 8, 64)
        (2, 16)
    """
    count = min(most, max(1, 2 * previous))
    if step_s is not None and step_s > 0:
        count = min(count, max(1, int(DECODE_CALL_S / step_s)))
    return count


def prefill_chunks(length: int, start: int) -> tuple[int, int]:
    """``(chunk length, padded length)`` for prefilling ``length`` tokens after ``start``."""
    if start == 0 and length <= MAX_PREFILL_CHUNK:
        bucket = prompt_bucket(length)
        return bucket, bucket
    # A new chat turn over a kept prefix goes in chunks of one of two sizes, so a chat compiles
    # two prefill programs for all of its turns; long prompts go in chunks too.
    if start == 0:
        chunk = MAX_PREFILL_CHUNK
    elif length <= SHORT_CONTINUATION_CHUNK:
        chunk = SHORT_CONTINUATION_CHUNK
    else:
        chunk = CONTINUATION_CHUNK
    return chunk, -(-length // chunk) * chunk


def cache_length_for(needed: int, context: int) -> int:
    """The cache length for ``needed`` slots: a power of two from `MIN_CACHE_BUCKET`, at most
    the model's ``context``.

    Example:
        >>> cache_length_for(300, 2048), cache_length_for(5000, 2048)
        (512, 2048)
    """
    return min(context, max(MIN_CACHE_BUCKET, next_power_of_two(needed)))
