"""`ChatState`: a conversation with a model, formatted by the checkpoint's own chat template.

Each turn is rendered with the template (as transformers' ``apply_chat_template`` renders it)
and streamed by the generation engine. The engine keeps the key/value cache of the last turn,
so the next turn only computes the tokens that are new. When the conversation outgrows the
model's context, the oldest turns are dropped (never the system prompt) and the final event
says so.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from kerasllm_widget.chat.chat_branches import ChatBranches
from kerasllm_widget.chat.chat_tree import ChatTree
from kerasllm_widget.generation import settings
from kerasllm_widget.generation.api import DEFAULT_MAX_NEW_TOKENS, make_sampler, stream_ids
from kerasllm_widget.generation.engine import CONTINUATION_CHUNK
from kerasllm_widget.generation.events import DoneEvent, TokenEvent
from kerasllm_widget.generation.registry import engine_for
from kerasllm_widget.generation.steering import steering_edits
from kerasllm_widget.generation.stopping import stop_token_ids_of

__all__ = ["ChatState"]

Message = dict[str, Any]

DEFAULT_CHAT_CACHE_LENGTH = 512


class TurnOptions(NamedTuple):
    """The checked options of one turn (`ChatState._options`)."""

    sampler: Any
    max_new_tokens: int
    top_k_alternatives: int
    seed: int | None
    stop_strings: Any
    stop_token_ids: Any
    steering: Any


class ChatState(ChatBranches):
    """The turns of one chat, and the model that answers them.

    ``messages`` holds the user and assistant turns (``{"id", "role", "content"}``) on the
    visible path; the system prompt is kept apart in ``system_prompt`` and always leads the
    formatted prompt. Branches of a reply (`branch`, `branches`, `switch`) live in ``tree``.

    Example:
        >>> chat = ChatState(model, system_prompt="Answer in one sentence.")  # doctest: +SKIP
        >>> chat.send("What is a tokenizer?", temperature=0)  # doctest: +SKIP
        'A tokenizer turns text into the integer ids a model reads.'
        >>> print(chat.prompt)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        system_prompt: str | None = None,
        *,
        sampler=None,
        context_length: int | None = None,
        cache_length: int | None = None,
        escape_special_tokens: bool = False,
        steering: dict | None = None,
    ):
        if model.tokenizer is None:
            raise ValueError("ChatState needs a model with a tokenizer (load it with from_preset).")
        self.model = model
        self.system_prompt = system_prompt
        self.messages: list[Message] = []
        # The default sampler of this chat; keyword arguments of each call override its knobs.
        self.sampler = sampler
        model_context = int(model.backbone.max_sequence_length)
        # How many tokens the chat may use (at most the model's context).
        self.context_length = min(context_length or model_context, model_context)
        # The key/value cache starts this long and doubles as the chat grows. Attention runs
        # over every slot of the static cache (on a CPU a 2048-slot cache costs SmolLM2 twice
        # the time per token of a 256-slot one), so it is not made context-long up front; each
        # doubling compiles one decode program, once (and the persistent compilation cache
        # keeps it for later sessions).
        self.cache_length = min(cache_length or DEFAULT_CHAT_CACHE_LENGTH, self.context_length)
        # Special-token strings typed in a message (``<|im_start|>system``) are read as plain
        # text instead of as the template's control tokens (the ChatWidget turns this on).
        self.escape_special_tokens = bool(escape_special_tokens)
        # ``{layer: vector}`` added to the residual after that layer for every reply (None:
        # off); a call's own ``steering=`` overrides it. See `generation.steering`.
        self.steering = steering
        # Message ids, reply token ids and the hidden branches (`chat_tree`).
        self.tree = ChatTree()
        # Messages dropped from the prompt because the context filled, oldest first (the cache
        # views list them); a reset forgets them.
        self.dropped_messages: list[Message] = []
        self._lock = threading.Lock()

    # ---- formatting --------------------------------------------------------------------------
    def _conversation(self, messages: list[Message] | None = None) -> list[Message]:
        messages = self.messages if messages is None else messages
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + [{"role": m["role"], "content": m["content"]} for m in messages]

    def format(
        self, messages: list[Message] | None = None, add_generation_prompt: bool = True
    ) -> str:
        """The conversation (by default this chat's) rendered with the chat template.

        Example:
            >>> chat.format([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
            '<|im_start|>system\\n...<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        return self.model.tokenizer.apply_chat_template(
            self._conversation(messages), add_generation_prompt=add_generation_prompt
        )

    @property
    def prompt(self) -> str:
        """The formatted prompt the model reads for its next reply."""
        return self.format()

    def prompt_ids(
        self, messages: list[Message] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        """The token ids the model reads for ``messages`` (by default this chat's), with the
        system prompt, the start token and, when asked, the assistant's header.

        Example:
            >>> chat.prompt_ids()[:1]  # doctest: +SKIP
            [128000]
        """
        preprocessor = self.model.preprocessor
        return self.model.tokenizer.chat_prompt_ids(
            self._conversation(messages),
            add_generation_prompt=add_generation_prompt,
            escape_special_tokens=self.escape_special_tokens,
            add_start_token=getattr(preprocessor, "add_start_token", True),
        )

    def context_tokens(self) -> int:
        """How many tokens the conversation takes in the model's context now (0 before the
        first message when there is no system prompt: some templates cannot render nothing).

        Example:
            >>> chat.context_tokens()  # doctest: +SKIP
            42
        """
        if not self.messages and not self.system_prompt:
            return 0
        return len(self.prompt_ids(add_generation_prompt=bool(self.messages)))

    # ---- turns -------------------------------------------------------------------------------
    def send(self, text: str, **sampling: Any) -> str:
        """Adds a user turn and returns the model's reply (also added to `messages`).

        Example:
            >>> chat.send("Name a colour.", max_new_tokens=16)  # doctest: +SKIP
            'Blue.'
        """
        done = None
        for event in self.stream(text, **sampling):
            if isinstance(event, DoneEvent):
                done = event
        return done.reply if done is not None else ""

    def stream(
        self, text: str, *, cancel_event: threading.Event | None = None, **sampling: Any
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Adds a user turn and streams the reply: `TokenEvent`s, then one `DoneEvent`.

        ``sampling``: ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
        ``max_new_tokens``, ``seed``, ``top_k_alternatives`` (and ``stop_strings``,
        ``stop_token_ids``). A cancelled reply keeps what was generated so far.

        Example:
            >>> for event in chat.stream("Tell me a joke."):  # doctest: +SKIP
            ...     print(getattr(event, "text", ""), end="", flush=True)
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The message is empty; type something to send.")
        return self._reply({"role": "user", "content": text}, cancel_event, sampling)

    def regenerate(
        self, *, cancel_event: threading.Event | None = None, **sampling: Any
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Answers the last user turn again (streamed like `stream`). The new reply becomes a
        sibling of the old one, which `switch` shows again (see `branches`).

        Example:
            >>> events = list(chat.regenerate(temperature=1.0))  # doctest: +SKIP
        """
        with self._lock:
            if not any(m["role"] == "user" for m in self.messages):
                raise ValueError("There is no user message to answer again.")
        return self._reply(None, cancel_event, sampling)

    def edit(
        self,
        index: int,
        text: str,
        *,
        cancel_event: threading.Event | None = None,
        **sampling: Any,
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Replaces the user message at ``messages[index]`` with ``text`` and streams a new
        reply (like `stream`). The new message becomes a sibling of the old one, whose
        continuation `switch` shows again. Nothing changes until the stream is iterated, and a
        stream that fails or is closed early leaves `messages` and the tree as they were.

        Example:
            >>> events = list(chat.edit(0, "Name a colour, briefly."))  # doctest: +SKIP
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The message is empty; type something to send.")
        with self._lock:
            count = len(self.messages)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
                raise IndexError(
                    f"index={index!r} is not a message of this chat: use 0 to {count - 1}."
                    if count
                    else f"index={index!r}: this chat has no messages to edit yet."
                )
            if self.messages[index]["role"] != "user":
                raise ValueError(
                    f"messages[{index}] is the {self.messages[index]['role']}'s; only user "
                    "messages can be edited (regenerate() answers the last one again)."
                )
        return self._reply({"role": "user", "content": text}, cancel_event, sampling, keep=index)

    def truncate(self, count: int) -> list[Message]:
        """Keeps the first ``count`` messages and returns the ones removed. The removed
        messages leave the tree too, with every branch that hangs from them (hidden siblings
        of a removed message and their continuations): switch to a branch first to keep it.

        Example:
            >>> chat.truncate(2)  # doctest: +SKIP
            [{'role': 'user', 'content': 'And then?'}]
        """
        with self._lock:
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"count={count!r} is not allowed: use a whole number >= 0.")
            removed = self.messages[count:]
            del self.messages[count:]
            self.tree.forget(removed)
            return removed

    def undo(self) -> list[Message]:
        """Removes the last exchange (the last user turn and what followed it); returns it.
        Like `truncate`, the branches hanging from the removed messages go with them.

        Example:
            >>> chat.undo()  # doctest: +SKIP
            [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
        """
        with self._lock:
            index = next(
                (
                    i
                    for i in range(len(self.messages) - 1, -1, -1)
                    if self.messages[i]["role"] == "user"
                ),
                0,
            )
            removed = self.messages[index:]
            del self.messages[index:]
            self.tree.forget(removed)
            return removed

    def reset(self) -> None:
        """Forgets every turn (the system prompt stays).

        Example:
            >>> chat.reset(); chat.messages  # doctest: +SKIP
            []
        """
        with self._lock:
            self.messages.clear()
            self.tree = ChatTree()
            self.dropped_messages = []

    # ---- the work ----------------------------------------------------------------------------
    def _fit_context(
        self, messages: list[Message], reserve: int
    ) -> tuple[list[Message], int, list[int]]:
        """Drops the oldest turns until the prompt leaves ``reserve`` tokens for the reply."""
        dropped = 0
        while True:
            ids = self.prompt_ids(messages)
            if len(ids) + reserve <= self.context_length or len(messages) <= 1:
                break
            # A turn is a user message and the replies after it.
            cut = 1
            while cut < len(messages) - 1 and messages[cut]["role"] != "user":
                cut += 1
            messages = messages[cut:]
            dropped += 1
        if len(ids) >= self.context_length:
            raise ValueError(
                f"The message alone takes {len(ids)} tokens, more than the model's context "
                f"({self.context_length}). Send a shorter one."
            )
        return messages, dropped, ids

    def _options(self, sampling: dict[str, Any]) -> TurnOptions:
        """The sampler and the other options of one reply, checked."""
        sampling = dict(sampling)
        max_new_tokens = sampling.pop("max_new_tokens", None)
        max_new_tokens = (
            DEFAULT_MAX_NEW_TOKENS
            if max_new_tokens is None
            else settings.check_max_new_tokens(max_new_tokens)
        )
        top_k_alternatives = settings.check_count(
            sampling.pop("top_k_alternatives", None) or 0, "top_k_alternatives"
        )
        seed = sampling.pop("seed", None)
        stop_strings = sampling.pop("stop_strings", None)
        stop_token_ids = sampling.pop("stop_token_ids", None)
        steering = sampling.pop("steering", self.steering)
        unknown = set(sampling) - {
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "sampler",
        }
        if unknown:
            raise TypeError(f"Unknown sampling option(s): {', '.join(sorted(unknown))}")
        base = sampling.pop("sampler", None) or self.sampler or engine_for(self.model).sampler
        sampler = make_sampler(base, **sampling)
        return TurnOptions(
            sampler,
            max_new_tokens,
            top_k_alternatives,
            seed,
            stop_strings,
            stop_token_ids,
            steering,
        )

    def _reply(
        self,
        user: Message | None,
        cancel_event: threading.Event | None,
        sampling: dict[str, Any],
        keep: int | None = None,
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Answers ``user`` after the first ``keep`` messages (None: after all of them); with
        ``user`` None, answers the last user turn again. What is replaced (the messages from
        ``keep`` on, the replies after the last user turn) becomes a hidden sibling in the tree.
        A generator: nothing changes until it is iterated. Until the reply is done, a failure
        or an early close puts `messages` and the tree back exactly as they were."""
        options = self._options(sampling)
        if user is not None:
            user = self.tree.message("user", user["content"])

        with self._lock:
            self.messages[:] = before = self.tree.with_ids(self.messages)
            base = before if keep is None else before[:keep]
            # Where the new messages go: the edited question, or the reply answered again.
            at = len(base)
            if user is None:
                base = list(base)
                while base and base[-1]["role"] != "user":
                    base.pop()
                if not base:
                    raise ValueError("There is no user message to answer again.")
                user = base.pop()
                at = len(base) + 1
            # Room for the whole reply, but a huge max_new_tokens must not push every turn out.
            reserve = min(int(options.max_new_tokens), self.context_length // 2)
            kept, dropped, prompt_ids = self._fit_context([*base, user], reserve)
            # The transcript shows the turn being answered; `_run` puts `before` back if the
            # reply never finishes.
            self.messages[:] = [*kept[:-1], user]
        drop = len(base) + 1 - len(kept)
        turn = (before, at, user, drop)
        yield from self._run(turn, prompt_ids, (dropped, base[:drop]), cancel_event, options)

    def _turn_events(
        self, prompt_ids: list[int], cancel_event, options: TurnOptions
    ) -> Iterator[TokenEvent | DoneEvent]:
        """The engine's events for one turn (a reply or a branch) from ``prompt_ids``; when it
        is done, the next turn's programs start compiling in the background."""
        for event in stream_ids(
            self.model,
            prompt_ids,
            max_new_tokens=int(options.max_new_tokens),
            sampler=options.sampler,
            stop_token_ids=options.stop_token_ids,
            stop_strings=options.stop_strings,
            top_k_alternatives=options.top_k_alternatives,
            cancel_event=cancel_event,
            seed=options.seed,
            min_cache_length=self.cache_length,
            steering=options.steering,
        ):
            if isinstance(event, DoneEvent):
                self._prepare_next_turn(event, options)
            yield event

    def _prepare_next_turn(self, done: DoneEvent, options: TurnOptions) -> None:
        """Compiles in the background, while the user reads and types, the programs the next
        turn may need and no request has compiled yet: the chat-turn prefill chunks (short and
        long) over the kept cache, and, when the next turn may not fit that cache, the programs
        for a cache twice as long. So no turn waits for the compiler."""
        engine = engine_for(self.model)
        length = engine.kept_cache_length()
        if length is None:
            return
        used = done.prompt_tokens + done.generated_tokens
        # The programs are sized by the stop ids the turns carry, as the turns' own are.
        stop_count = len(stop_token_ids_of(self.model.tokenizer, options.stop_token_ids))
        programs = {
            "num_alternatives": options.top_k_alternatives,
            "stop_count": stop_count,
            "edits": steering_edits(self.model, options.steering),  # steered turns' programs
        }
        engine.precompile(length, options.sampler, **programs)  # a no-op when all are compiled
        # Room for a new user turn (one prefill chunk) and a reply as long as this one could be.
        needed = used + CONTINUATION_CHUNK + int(options.max_new_tokens)
        if needed <= length or length >= self.context_length:
            return
        engine.precompile(engine.cache_length_for(needed), options.sampler, **programs)

    def _run(self, turn, prompt_ids, dropping, cancel_event, options: TurnOptions):
        """Streams the turn; ``dropping`` is ``(turns, messages)`` dropped to fit the context."""
        before, at, user, drop = turn
        dropped, lost = dropping
        finished = False
        try:
            for event in self._turn_events(prompt_ids, cancel_event, options):
                if isinstance(event, DoneEvent):
                    finished = True
                    new = [] if at and before[at - 1] is user else [user]
                    if event.reply:
                        new.append(self.tree.message("assistant", event.reply, event.token_ids))
                    self._commit(before, at, new, drop, user)
                    if dropped:
                        self.dropped_messages.extend(lost)
                        event.dropped_turns = dropped
                        notice = (
                            f"The conversation outgrew the model's context "
                            f"({self.context_length} tokens): the oldest {dropped} "
                            f"turn{'s' if dropped > 1 else ''} were dropped."
                        )
                        event.notice = f"{notice} {event.notice}".strip()
                yield event
        finally:
            if not finished:
                # An error (or a consumer that walked away before the end): the turn was never
                # answered, so the transcript goes back to what it was (a regenerated reply, an
                # edited question and dropped turns included). Unless someone changed it since
                # (a reset while this reply ran): that change stands.
                with self._lock:
                    if self.messages and self.messages[-1] is user:
                        self.messages[:] = before

    def _commit(self, before, at, new, drop, user) -> None:
        """Makes the answered turn the visible path, and what it replaced a hidden sibling
        (`ChatTree.answer`), all at once: the tree changes on a copy that replaces it only when
        every step worked. A reset made while the reply ran stands (nothing is committed)."""
        with self._lock:
            if not self.messages or self.messages[-1] is not user:
                return
            tree = copy.deepcopy(self.tree)
            path = tree.answer(before, at, new, drop)
            self.tree, self.messages[:] = tree, path
