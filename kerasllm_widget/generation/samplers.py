"""Samplers: how the next token is picked from the model's logits.

Every sampler is one function of traced parameters (temperature, top-k, top-p, min-p,
repetition penalty), so that moving a slider in the chat panel never recompiles the decode
program. Only the *plan* (greedy or sampled; whether a full vocabulary sort is needed) is static.
keras_hub's names work as strings or objects: ``"greedy"``, ``"random"``, ``"top_k"``,
``"top_p"``, plus ``"min_p"``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kerasllm_widget.generation import settings
from kerasllm_widget.kernels import cpu

__all__ = [
    "Sampler",
    "GreedySampler",
    "RandomSampler",
    "TopKSampler",
    "TopPSampler",
    "MinPSampler",
    "SamplerPlan",
    "SamplerParams",
    "get_sampler",
    "sample_next_token",
    "top_k",
]


# top-k up to this k works on a fixed-width top-k instead of a sort of the vocabulary.
_TOP_K_WIDTH = 64
# top-p (and top-k up to this k) first looks at this many best tokens: the nucleus of a
# language model's distribution almost always lies among them (see `_sample_sorted`).
_NUCLEUS_WIDTH = 1024


def top_k(x, k: int, kernels: bool = False):
    """`jax.lax.top_k` along the last axis; through the CPU kernel with ``kernels`` (the
    engine's programs on a CPU: XLA there sorts the vocabulary, about 12 ms per token for k = 64
    over 49,152 logits, against well under a millisecond)."""
    if kernels:
        return cpu.top_k(x, k)
    return jax.lax.top_k(x, k)


class SamplerPlan(NamedTuple):
    """The static part of a sampler: a change here compiles a new decode program.

    ``mode`` is "greedy"; "narrow" (top-k of at most 64: everything, top-p included, is done on
    the top 64 logits); "full" (temperature and min-p over the whole vocabulary, no sort); or
    "sorted" (top-p without a narrow top-k: one sort of the vocabulary). ``kernels``: the
    program runs on a CPU with the native kernel (top-k without a sort); the engine sets it from
    its inference layout, the one switch for native code.
    """

    mode: str
    kernels: bool = False


class SamplerParams(NamedTuple):
    """The traced part of a sampler (float32/int32 scalars): changes never recompile."""

    temperature: Any
    top_k: Any  # 0: off
    top_p: Any  # 1.0: off
    min_p: Any  # 0.0: off
    repetition_penalty: Any  # 1.0: off


@dataclass(frozen=True)
class Sampler:
    """A sampling strategy, with every knob in one place.

    ``temperature == 0`` is greedy decoding. ``top_k`` keeps the k most likely tokens, ``top_p``
    the smallest set whose probability reaches p, ``min_p`` the tokens at least ``min_p`` times
    as likely as the best one. ``repetition_penalty`` divides the positive logits (multiplies the
    negative ones) of every token already in the prompt or the reply, as transformers does.
    ``seed`` makes sampling reproducible (None: a fresh seed per request).

    Example:
        >>> sampler = Sampler(temperature=0.7, top_p=0.9, seed=0)
        >>> sampler.plan
        SamplerPlan(mode='sorted', kernels=False)
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self):
        # One validation for every entry point (see `settings`): nan or inf never act as 1.0.
        settings.check_temperature(self.temperature)
        if self.top_k is not None:
            settings.check_top_k(self.top_k)
        if self.top_p is not None:
            settings.check_probability(self.top_p, "top_p")
        if self.min_p is not None:
            settings.check_probability(self.min_p, "min_p", open_below=False)
        if self.repetition_penalty is not None:
            settings.check_positive(self.repetition_penalty, "repetition_penalty")
        settings.check_seed(self.seed)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def plan(self) -> SamplerPlan:
        if self.is_greedy:
            return SamplerPlan("greedy")
        if self.top_k and self.top_k <= _TOP_K_WIDTH:
            return SamplerPlan("narrow")
        if self.top_p is not None and self.top_p < 1.0 or self.top_k:
            return SamplerPlan("sorted")
        return SamplerPlan("full")

    def params(self) -> SamplerParams:
        """The traced knobs as numpy scalars (off values where a knob is unset)."""
        return SamplerParams(
            temperature=np.float32(self.temperature if self.temperature > 0 else 1.0),
            top_k=np.int32(self.top_k or 0),
            top_p=np.float32(1.0 if self.top_p is None else self.top_p),
            min_p=np.float32(self.min_p or 0.0),
            repetition_penalty=np.float32(self.repetition_penalty or 1.0),
        )

    def replace(self, **changes: Any) -> Sampler:
        """A copy with some knobs changed (None values are ignored).

        Example:
            >>> Sampler(temperature=0.7).replace(top_k=40, top_p=None).top_k
            40
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


def GreedySampler() -> Sampler:  # noqa: N802  (keras_hub's class name)
    """Always the most likely token.

    Example:
        >>> GreedySampler().is_greedy
        True
    """
    return Sampler(temperature=0.0)


def RandomSampler(temperature: float = 1.0, seed: int | None = None) -> Sampler:  # noqa: N802
    """Samples from the whole (temperature-scaled) distribution.

    Example:
        >>> RandomSampler(temperature=0.8).plan.mode
        'full'
    """
    return Sampler(temperature=temperature, seed=seed)


def TopKSampler(k: int = 5, temperature: float = 1.0, seed: int | None = None) -> Sampler:  # noqa: N802
    """Samples among the ``k`` most likely tokens (keras_hub's default sampler, k=5).

    Example:
        >>> TopKSampler(k=40).top_k
        40
    """
    return Sampler(temperature=temperature, top_k=k, seed=seed)


def TopPSampler(  # noqa: N802
    p: float = 0.1, k: int | None = None, temperature: float = 1.0, seed: int | None = None
) -> Sampler:
    """Nucleus sampling: the smallest set of tokens whose probability reaches ``p``.

    Example:
        >>> TopPSampler(p=0.9).top_p
        0.9
    """
    return Sampler(temperature=temperature, top_p=p, top_k=k, seed=seed)


def MinPSampler(p: float = 0.05, temperature: float = 1.0, seed: int | None = None) -> Sampler:  # noqa: N802
    """Keeps tokens at least ``p`` times as likely as the most likely one.

    Example:
        >>> MinPSampler(0.1).min_p
        0.1
    """
    return Sampler(temperature=temperature, min_p=p, seed=seed)


_BY_NAME = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "min_p": MinPSampler,
}


# keras_hub samplers that pick among several continuations at once: no streaming engine runs
# them (each step's token could still change), so they are refused with what to use instead.
_NOT_STREAMABLE = {"beam", "contrastive"}


def _factory(name: str):
    # "top_p", "top-p" and keras_hub's class names ("TopPSampler") all work.
    snake = re.sub(r"(?<=[A-Za-z])(?=[A-Z])", "_", name)
    key = snake.lower().replace("-", "_").removesuffix("_sampler")
    if key in _NOT_STREAMABLE:
        raise ValueError(
            f"sampler={name!r} is not supported: keras_hub's {key} search keeps several "
            "continuations, which a token-by-token stream cannot show. Use one of "
            f"{', '.join(sorted(_BY_NAME))}."
        )
    factory = _BY_NAME.get(key)
    if factory is None:
        raise ValueError(f"Unknown sampler {name!r}; known: {', '.join(sorted(_BY_NAME))}.")
    return factory


def get_sampler(sampler: str | Sampler | dict | None) -> Sampler:
    """A `Sampler` from a name (keras_hub's ``"greedy"``, ``"top_k"``, ...), a keras_hub sampler
    object (its ``k``, ``p``, ``temperature``, ``seed``), its serialized config
    (``{"class_name": "top_k", "config": {"k": 10}}``, as ``keras_hub.samplers.get`` takes), or
    a `Sampler`.

    Example:
        >>> get_sampler("top_k").top_k, get_sampler({"class_name": "TopKSampler", "config": {"k": 9}}).top_k
        (5, 9)
    """
    if sampler is None:
        return GreedySampler()
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, str):
        return _factory(sampler)()
    if isinstance(sampler, dict) and "class_name" in sampler:
        config = dict(sampler.get("config") or {})
        config.pop("name", None)  # keras_hub's serialized configs name the object
        factory = _factory(str(sampler["class_name"]))
        try:
            # keras_hub's greedy config carries a temperature that greedy search never uses.
            return GreedySampler() if factory is GreedySampler else factory(**config)
        except TypeError as error:
            raise ValueError(f"sampler={sampler!r}: {error}.") from None
    # A keras_hub sampler object: read its public knobs.
    name = type(sampler).__name__
    temperature = float(getattr(sampler, "temperature", 1.0))
    seed = getattr(sampler, "seed", None)
    if name == "GreedySampler":
        return GreedySampler()
    if name == "TopKSampler":
        return TopKSampler(int(sampler.k), temperature, seed)
    if name == "TopPSampler":
        return TopPSampler(float(sampler.p), getattr(sampler, "k", None), temperature, seed)
    if name == "RandomSampler":
        return RandomSampler(temperature, seed)
    if name in ("BeamSampler", "ContrastiveSampler"):
        _factory(name)  # raises, saying why
    raise TypeError(f"Cannot use {sampler!r} as a sampler; pass a name or a `Sampler`.")


def apply_repetition_penalty(logits, seen, penalty):
    """transformers' rule: divide positive logits of seen tokens by ``penalty``, multiply negatives."""
    penalized = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalized, logits)


def _nucleus_mask(sorted_logits, params: SamplerParams):
    """Which of the descending ``sorted_logits`` survive top-k, min-p and top-p."""
    ranks = jnp.arange(sorted_logits.shape[-1])
    keep = jnp.where(params.top_k > 0, ranks < params.top_k, True)
    # min-p in log space: p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p).
    keep &= sorted_logits >= sorted_logits[..., :1] + jnp.log(jnp.maximum(params.min_p, 1e-30))
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    # Keep a token while the mass *before* it is below p: the top token always survives.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return keep & (mass_before < params.top_p)


def _draw_among(key, values, ids, keep=None):
    """One draw per row among candidate ``values`` (logits, those outside ``keep`` excluded),
    returned as the candidates' ``ids``."""
    if keep is not None:
        values = jnp.where(keep, values, -jnp.inf)
    choice = jax.random.categorical(key, values)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


def _sample_narrow(logits, key, params: SamplerParams, kernels: bool):
    """top-k <= 64: the 64 best logits (a top-k, no sort of the vocabulary) are enough for
    top-k, min-p and top-p alike, exactly."""
    width = min(_TOP_K_WIDTH, logits.shape[-1])
    values, ids = top_k(logits, width, kernels)
    return _draw_among(key, values, ids, _nucleus_mask(values, params))


def _sample_fully_sorted(logits, key, params: SamplerParams):
    order = jnp.argsort(-logits, axis=-1)
    values = jnp.take_along_axis(logits, order, -1)
    return _draw_among(key, values, order, _nucleus_mask(values, params))


def _sample_sorted(logits, key, params: SamplerParams, kernels: bool):
    """top-p (or a top-k above 64), exactly, on a CPU mostly without sorting the vocabulary.

    The best `_NUCLEUS_WIDTH` tokens decide the draw whenever every token outside them is
    excluded anyway: when top-k keeps at most that many, or (no top-k) when the tokens they
    keep already hold top_p of the kept probability mass, so that everything after them has
    at least top_p before it. Otherwise (a very flat distribution) the vocabulary is sorted, as
    it always was (`lax.cond`: only the branch taken runs)."""
    vocabulary = logits.shape[-1]
    width = min(_NUCLEUS_WIDTH, vocabulary)
    if width == vocabulary or not kernels:  # an accelerator sorts quickly
        return _sample_fully_sorted(logits, key, params)
    values, ids = top_k(logits, width, kernels)
    floor = values[..., :1] + jnp.log(jnp.maximum(params.min_p, 1e-30))  # min-p
    ranks = jnp.arange(width)
    keep = (values >= floor) & jnp.where(params.top_k > 0, ranks < params.top_k, True)
    within = (params.top_k > 0) & (params.top_k <= width)  # top-k keeps candidates only
    # The kept set's normaliser: the candidates' when top-k is within them, else the whole
    # vocabulary above the min-p floor (no top-k).
    kept_everywhere = jax.nn.logsumexp(jnp.where(logits >= floor, logits, -jnp.inf), axis=-1)
    kept_here = jax.nn.logsumexp(jnp.where(keep, values, -jnp.inf), axis=-1)
    log_total = jnp.where(within, kept_here, kept_everywhere)[..., None]
    probs = jnp.where(keep, jnp.exp(values - log_total), 0.0)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    nucleus = keep & (mass_before < params.top_p)
    decided = within | ((params.top_k == 0) & (probs.sum(-1) >= params.top_p))

    return jax.lax.cond(
        jnp.all(decided),
        lambda _: _draw_among(key, values, ids, nucleus),
        lambda _: _sample_fully_sorted(logits, key, params),
        None,
    )


def _sample_full(logits, key, params: SamplerParams, kernels: bool):
    """Temperature and min-p only: over the whole vocabulary, no sort.

    On a CPU a draw over the whole vocabulary (a random number per token: about 2 ms for
    49,152 tokens) is made only when needed: the draw first decides, with their total
    probability, whether the token is one of the 64 most likely (almost always, for a language
    model) and then picks among them; otherwise it draws from the rest. The odds of every token
    are exactly those of one draw over the vocabulary."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    keep = logits >= best + jnp.log(jnp.maximum(params.min_p, 1e-30))
    masked = jnp.where(keep, logits, -jnp.inf)
    vocabulary = logits.shape[-1]
    if vocabulary <= _TOP_K_WIDTH or not kernels:
        return jax.random.categorical(key, masked)
    values, ids = top_k(masked, _TOP_K_WIDTH, kernels)
    head_mass = jnp.exp(jax.nn.logsumexp(values, -1) - jax.nn.logsumexp(masked, -1))
    pick_key, head_key, tail_key = jax.random.split(key, 3)
    in_head = jax.random.uniform(pick_key, head_mass.shape) < head_mass
    head = _draw_among(head_key, values, ids)

    def from_the_rest(_):
        rows = jnp.arange(logits.shape[0])[:, None]
        in_top = jnp.zeros(logits.shape, bool).at[rows, ids].set(True)
        rest = jnp.where(in_top, -jnp.inf, masked)
        # Nothing left outside the 64 (min-p kept fewer): the head's mass is 1 up to rounding.
        some = jnp.isfinite(jnp.max(rest, axis=-1))
        return jnp.where(some, jax.random.categorical(tail_key, rest), head)

    rest = jax.lax.cond(jnp.all(in_head), lambda _: head, from_the_rest, None)
    return jnp.where(in_head, head, rest)


def sample_next_token(logits, key, plan: SamplerPlan, params: SamplerParams, seen=None):
    """Picks one token per row of ``logits [B, V]`` (float32); returns int32 ``[B]``.

    Example:
        >>> import jax
        >>> logits = jnp.array([[0.0, 3.0, 1.0]])
        >>> plan, params = Sampler(temperature=0).plan, Sampler(temperature=0).params()
        >>> int(sample_next_token(logits, jax.random.key(0), plan, params)[0])
        1
    """
    logits = logits.astype(jnp.float32)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if plan.mode == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / params.temperature
    pick = {"narrow": _sample_narrow, "sorted": _sample_sorted, "full": _sample_full}[plan.mode]
    return pick(logits, key, params, plan.kernels).astype(jnp.int32)
