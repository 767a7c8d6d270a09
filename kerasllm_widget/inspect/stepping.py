"""Generation one token at a time, for teaching: see the distribution, take the sampler's pick or
choose another token, and go on from that choice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasllm_widget.generation.api import stream_ids
from kerasllm_widget.generation.events import TokenEvent
from kerasllm_widget.generation.samplers import Sampler, sample_next_token
from kerasllm_widget.inspect._compiled import InspectionPass
from kerasllm_widget.inspect._sources import backbone_of, tokenizer_of
from kerasllm_widget.inspect.distributions import NextTokenDistribution, _softmax, _top_k, entropy
from kerasllm_widget.inspect.pieces import piece


@dataclass
class Step:
    """One token added to the reply, and what the model thought at that point."""

    token_id: int
    piece: str
    prob: float  # the model's probability of this token (temperature 1)
    entropy: float  # nats
    proposed_id: int  # what the sampler picked
    chosen_by: str  # "sampler" or "user"
    top_ids: list[int]
    top_probs: list[float]
    top_pieces: list[str]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class StepSession:
    """A reply built token by token from a prompt.

    Each position is scored by a full pass over the tokens so far, so any token (even one the
    sampler would never pick) can be chosen and the next distribution follows from it. The
    sampler's pick is drawn by the engine's own sampling function with the given settings.

    Args:
        model: a `Llama3CausalLM`.
        prompt_ids: the token ids the reply continues (special tokens included).
        top_k: how many alternatives each step shows.

    Example:
        >>> session = StepSession(model, model.preprocessor.tokenizer("The sky is"))  # doctest: +SKIP
        >>> session.distribution().pieces[:3]  # doctest: +SKIP
        ['␣blue', '␣the', '␣a']
        >>> session.choose(session.propose(temperature=0))  # doctest: +SKIP
    """

    def __init__(self, model, prompt_ids, top_k: int = 10):
        self.model = model
        self.backbone = backbone_of(model)
        self.tokenizer = tokenizer_of(model)
        self.prompt_ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
        if not self.prompt_ids:
            raise ValueError("a step session needs at least one prompt token")
        self.top_k = int(top_k)
        self.steps: list[Step] = []
        self._logits: dict[int, np.ndarray] = {}  # context length -> next-token logits
        self._run: InspectionPass | None = None

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + [s.token_id for s in self.steps]

    @property
    def stop_ids(self) -> set[int]:
        ids = set(getattr(self.tokenizer, "stop_token_ids", ()) or ())
        if self.tokenizer.end_token_id is not None:
            ids.add(int(self.tokenizer.end_token_id))
        return ids

    @property
    def finished(self) -> bool:
        """The last chosen token ends the reply, or the context is full."""
        if self.steps and self.steps[-1].token_id in self.stop_ids:
            return True
        return len(self.ids) >= int(self.backbone.max_sequence_length)

    @property
    def text(self) -> str:
        """The reply so far (special tokens kept, so a chosen stop token shows)."""
        return self.tokenizer.detokenize([s.token_id for s in self.steps])

    def logits(self) -> np.ndarray:
        """Float32 logits ``[V]`` of the token after the current ids."""
        ids = self.ids
        cached = self._logits.get(len(ids))
        if cached is None:
            # Each step shares all but its last tokens with the one before: the pass reuses
            # the previous pass's work on them.
            run = InspectionPass(
                self.backbone,
                np.asarray([ids], np.int32),
                np.ones((1, len(ids)), bool),
                previous=self._run,
            )
            cached = run.logits(len(ids) - 1, len(ids))[0, 0]
            self._run = run
            self._logits = {len(ids): cached}  # only the newest position is ever asked again
        return cached

    def distribution(self):
        """The `NextTokenDistribution` at the current position (temperature 1).

        Example:
            >>> session.distribution().entropy  # doctest: +SKIP
            2.31
        """
        probs = _softmax(self.logits())
        ids, top = _top_k(probs, self.top_k)
        return NextTokenDistribution(
            ids,
            top.astype(np.float32),
            [piece(self.tokenizer, i) for i in ids],
            float(entropy(probs)),
            len(self.ids),
        )

    def propose(
        self,
        temperature: float = 0.7,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
    ) -> int:
        """The token the generation sampler would pick here, with these settings.

        Example:
            >>> session.propose(temperature=0)  # greedy: the most likely token  # doctest: +SKIP
            4796
        """
        import jax

        sampler = _sampler(temperature, top_k, top_p, min_p, repetition_penalty)
        logits = self.logits()[None]
        seen = None
        if repetition_penalty not in (None, 1.0):
            seen = np.zeros(logits.shape, bool)
            seen[0, self.ids] = True
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        key = jax.random.key(int(seed) + len(self.ids))  # a seeded session still varies by step
        token = sample_next_token(logits, key, sampler.plan, sampler.params(), seen)
        return int(np.asarray(token)[0])

    def choose(self, token_id: int, proposed_id: int | None = None) -> Step:
        """Appends ``token_id`` to the reply; the next distribution follows from it.

        Example:
            >>> session.choose(1917).piece  # doctest: +SKIP
            '␣world'
        """
        token_id = int(token_id)
        if not 0 <= token_id < int(self.backbone.vocabulary_size):
            raise ValueError(f"token id {token_id} is outside the vocabulary")
        if self.finished:
            raise ValueError("the reply has ended; undo a step or reset to go on")
        probs = _softmax(self.logits())
        ids, top = _top_k(probs, self.top_k)
        proposed = token_id if proposed_id is None else int(proposed_id)
        return self._append(token_id, probs[token_id], entropy(probs), proposed, ids, top)

    def _append(self, token_id, prob, nats, proposed_id, top_ids, top_probs) -> Step:
        step = Step(
            token_id=int(token_id),
            piece=piece(self.tokenizer, token_id),
            prob=float(prob),
            entropy=float(nats),
            proposed_id=int(proposed_id),
            chosen_by="sampler" if int(proposed_id) == int(token_id) else "user",
            top_ids=[int(i) for i in top_ids],
            top_probs=[float(p) for p in top_probs],
            top_pieces=[piece(self.tokenizer, i) for i in top_ids],
        )
        self.steps.append(step)
        return step

    def finish(
        self,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
    ) -> int:
        """Lets the generation engine write the rest of the reply from the tokens chosen so far;
        returns how many tokens it added. Their alternatives come from the engine's events.

        Example:
            >>> session.choose(1917); session.finish(max_new_tokens=20)  # doctest: +SKIP
            20
        """
        if self.finished or max_new_tokens < 1:
            return 0
        sampler = _sampler(temperature, top_k, top_p, min_p, repetition_penalty)
        before = len(self.steps)
        events = stream_ids(
            self.model,
            self.ids,
            max_new_tokens=int(max_new_tokens),
            sampler=sampler,
            top_k_alternatives=self.top_k,
            seed=seed,
        )
        for event in events:
            if isinstance(event, TokenEvent):
                alternatives = event.top_k
                self._append(
                    event.token_id,
                    np.exp(event.logprob),
                    float("nan"),  # the engine reports the top k, not the entropy
                    event.token_id,
                    [a.token_id for a in alternatives],
                    [a.prob for a in alternatives],
                )
            elif event.stop_reason == "stop_token" and self.stop_ids:
                # The engine does not report which stop token it drew; the end token stands in.
                end = self.tokenizer.end_token_id
                self.choose(int(end) if end is not None else min(self.stop_ids))
        self._logits = {}
        return len(self.steps) - before

    def undo(self) -> Step | None:
        """Takes the last token back (None when there is none)."""
        self._logits = {}
        return self.steps.pop() if self.steps else None

    def reset(self, prompt_ids=None) -> None:
        """Drops the reply (and starts from new prompt ids when given)."""
        if prompt_ids is not None:
            self.prompt_ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
        self.steps = []
        self._logits = {}


def _sampler(temperature, top_k, top_p, min_p, repetition_penalty):
    """The generation sampler with these settings (0 or None turns top-k and min-p off); the
    proposals and `StepSession.finish` draw with the same one."""
    return Sampler(
        temperature=float(temperature),
        top_k=top_k or None,
        top_p=top_p,
        min_p=min_p or None,
        repetition_penalty=repetition_penalty,
    )
