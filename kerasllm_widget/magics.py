"""Notebook magics for inspector cells: ``%load_ext kerasllm_widget``, then

- ``%%tokens [preset]``: a TokenInspector over the cell's text;
- ``%%preprocess [--sequence-length N] [preset]``: the preprocessor's table of the cell's lines;
- ``%attention [chat] [--layer L] [--head H]``: an AttentionView on a chat's conversation;
- ``%%lens [preset] [--top-k K]``: the logit lens of the cell's text, the top next token after
  every layer at every position, as a text table;
- ``%%attribution [preset] --target N [--method M] [--steps S]``: how much each token of the
  cell's text counts for the token at position N, one line per token.

Without a preset, the magics use the model (or chat) assigned last in the notebook; a preset
named to ``%%lens`` or ``%%attribution`` is loaded with its weights, once. Each takes
``--help``. The extension also loads from ``c.InteractiveShellApp.extensions``, as IPython
extensions do.

Example (in a notebook):

    %load_ext kerasllm_widget
    %%tokens smollm2-135m-instruct
    Hello world!
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, add_help=False)
    parser.add_argument("--help", "-h", action="store_true", help="show this help")
    return parser


def _parse(parser: argparse.ArgumentParser, line: str) -> argparse.Namespace | None:
    """Arguments of a magic line; None after printing the help (asked for, or on a mistake the
    user needs it for)."""
    try:
        args, extra = parser.parse_known_args(shlex.split(line))
    except (SystemExit, ValueError) as exc:  # argparse exits on errors; quotes may not match
        raise UsageError(f"{parser.format_usage().strip()}\n{exc}") from None
    if extra:
        raise UsageError(f"unexpected arguments {extra}\n{parser.format_usage().strip()}")
    if args.help:
        print(parser.format_help())
        return None
    return args


def _is_model(value: Any) -> bool:
    return hasattr(value, "backbone") and hasattr(value, "preprocessor")


def _is_chat(value: Any) -> bool:
    return hasattr(value, "chat_state") and hasattr(value, "transcript")


@magics_class
class InspectorMagics(Magics):
    """The inspector cell magics (see the module docstring)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._presets: dict[str, Any] = {}
        self._models: dict[str, Any] = {}

    # ---- finding what to inspect ----

    def _last(self, accept) -> Any:
        """The value assigned last in the user's namespace that ``accept`` takes (dicts keep
        insertion order, so this is the latest name bound to a new value)."""
        for name, value in reversed(list(self.shell.user_ns.items())):
            if name.startswith("_"):
                continue
            if accept(value):
                return value
        return None

    def _model_for(self, preset: str | None, need: str) -> Any:
        if preset:
            if preset in self.shell.user_ns and not isinstance(self.shell.user_ns[preset], str):
                return self.shell.user_ns[preset]  # a variable name: `%%tokens model`
            if preset not in self._presets:
                from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

                # A tokenizer is all these magics need: seconds, not the weights' minutes.
                self._presets[preset] = Llama3Tokenizer.from_preset(preset)
            return self._presets[preset]
        found = self._last(lambda v: _is_model(v) or (_is_chat(v) and v.chat_state is not None))
        if found is None:
            raise UsageError(
                f"no model to {need}: name a preset (`%%tokens smollm2-135m-instruct`) or load a "
                "model first (`model = Llama3CausalLM.from_preset(...)`)"
            )
        return found.chat_state.model if _is_chat(found) else found

    def _weights_for(self, preset: str | None, need: str) -> Any:
        """A model with its weights: a variable (a model or a chat), a preset (loaded once), or
        the last model or chat in the notebook."""
        if (
            preset
            and preset in self.shell.user_ns
            and not isinstance(self.shell.user_ns[preset], str)
        ):
            found = self.shell.user_ns[preset]
        elif preset:
            if preset not in self._models:
                from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

                self._models[preset] = Llama3CausalLM.from_preset(preset)
            found = self._models[preset]
        else:
            found = self._last(lambda v: _is_model(v) or (_is_chat(v) and v.chat_state is not None))
            if found is None:
                raise UsageError(
                    f"no model to {need}: name a preset (`%%lens smollm2-135m-instruct`) or load "
                    "a model first (`model = Llama3CausalLM.from_preset(...)`)"
                )
        if _is_chat(found) and found.chat_state is not None:
            found = found.chat_state.model
        if not _is_model(found):
            raise UsageError(
                f"{preset!r} is a {type(found).__name__}, not a model: to {need} needs its weights"
            )
        return found

    # ---- magics ----

    @cell_magic
    def tokens(self, line: str, cell: str):
        """%%tokens [preset]: a TokenInspector over the cell's text."""
        parser = _parser("%%tokens", "A TokenInspector over the cell's text.")
        parser.add_argument(
            "preset", nargs="?", help="preset name or variable (default: the last model)"
        )
        parser.add_argument("--compare", help="a second preset or variable, side by side")
        parser.add_argument(
            "--sequence-length", type=int, default=16, help="the preprocessor view's length"
        )
        args = _parse(parser, line)
        if args is None:
            return None
        from kerasllm_widget.widgets.token_inspector import TokenInspector

        source = self._model_for(args.preset, "tokenize with")
        other = self._model_for(args.compare, "compare with") if args.compare else None
        return TokenInspector(
            source, text=cell.rstrip("\n"), compare_with=other, sequence_length=args.sequence_length
        )

    @cell_magic
    def preprocess(self, line: str, cell: str):
        """%%preprocess [--sequence-length N] [preset]: the preprocessor's table, one text a line."""
        parser = _parser(
            "%%preprocess", "The preprocessor's table of the cell's lines, as one batch."
        )
        parser.add_argument(
            "preset", nargs="?", help="preset name or variable (default: the last model)"
        )
        parser.add_argument(
            "--sequence-length", type=int, default=8, help="the packed length (default 8)"
        )
        args = _parse(parser, line)
        if args is None:
            return None
        if not 1 <= args.sequence_length <= 4096:
            raise UsageError("--sequence-length must be between 1 and 4096")
        texts = [t for t in cell.splitlines() if t.strip()]
        if not texts:
            raise UsageError("write one text per line in the cell")
        from kerasllm_widget.widgets.preprocessor_inspector import PreprocessorInspector

        source = self._model_for(args.preset, "preprocess with")
        return PreprocessorInspector(source, texts, sequence_length=args.sequence_length)

    @line_magic
    def attention(self, line: str):
        """%attention [chat] [--layer L] [--head H]: an AttentionView on a chat's conversation."""
        parser = _parser("%attention", "An AttentionView on the last chat's conversation.")
        parser.add_argument(
            "chat", nargs="?", help="a ChatWidget or ChatState variable (default: the last chat)"
        )
        parser.add_argument("--layer", type=int, default=0, help="the layer shown first")
        parser.add_argument(
            "--head", type=int, default=-1, help="the head shown first (-1: the average)"
        )
        args = _parse(parser, line)
        if args is None:
            return None
        if args.chat:
            if args.chat not in self.shell.user_ns:
                raise UsageError(f"no variable named {args.chat!r}")
            chat = self.shell.user_ns[args.chat]
        else:
            chat = self._last(
                lambda v: _is_chat(v) or (hasattr(v, "messages") and hasattr(v, "format"))
            )
            if chat is None:
                raise UsageError("no chat to look at: make one first (`chat = ChatWidget(model)`)")
        from kerasllm_widget.widgets.attention_view import AttentionView

        view = AttentionView(chat=chat)
        view.layer, view.head = args.layer, args.head
        return view

    @cell_magic
    def lens(self, line: str, cell: str):
        """%%lens [preset] [--top-k K]: the logit lens of the cell's text, as a text table."""
        parser = _parser(
            "%%lens",
            "The logit lens of the cell's text: what the model would say next after each layer, "
            "at each position (the last layer is its real prediction).",
        )
        parser.add_argument(
            "preset", nargs="?", help="preset name or variable (default: the last model)"
        )
        parser.add_argument(
            "--top-k",
            type=int,
            default=5,
            help="alternatives listed for the last position (default 5)",
        )
        parser.add_argument("--width", type=int, default=8, help="characters per cell (default 8)")
        args = _parse(parser, line)
        if args is None:
            return None
        if args.top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if args.width < 2:
            raise UsageError("--width must be at least 2")
        text = cell.rstrip("\n")
        if not text.strip():
            raise UsageError("write the text to look through in the cell")
        from kerasllm_widget import inspect
        from kerasllm_widget.inspect._sources import text_ids, tokenizer_of
        from kerasllm_widget.inspect.pieces import piece

        model = self._weights_for(args.preset, "look through")
        tokenizer = tokenizer_of(model)
        lens = inspect.logit_lens(model, text_ids(model, text), top_k=args.top_k)
        print(lens.text_table(lambda i: piece(tokenizer, i), width=args.width))
        return None

    @cell_magic
    def attribution(self, line: str, cell: str):
        """%%attribution [preset] --target N [--method M] [--steps S]: a score per token."""
        from kerasllm_widget.inspect.attributions import ATTRIBUTION_METHODS

        parser = _parser(
            "%%attribution",
            "How much each token of the cell's text counts for the model's log-probability of "
            "the token at position --target (positions as listed, 0 first; negative counts from "
            "the end).",
        )
        parser.add_argument(
            "preset", nargs="?", help="preset name or variable (default: the last model)"
        )
        parser.add_argument("--target", type=int, help="the position of the predicted token")
        parser.add_argument(
            "--method",
            default="grad_x_input",
            help=f"one of {', '.join(ATTRIBUTION_METHODS)} (default grad_x_input)",
        )
        parser.add_argument(
            "--steps", type=int, default=32, help="integrated gradients' steps (default 32)"
        )
        args = _parse(parser, line)
        if args is None:
            return None
        if args.target is None:
            raise UsageError(f"name the token to explain: --target N\n{parser.format_usage()}")
        text = cell.rstrip("\n")
        if not text.strip():
            raise UsageError("write the text in the cell")
        from kerasllm_widget import inspect
        from kerasllm_widget.inspect._sources import text_ids, tokenizer_of
        from kerasllm_widget.inspect.pieces import pieces

        model = self._weights_for(args.preset, "attribute with")
        ids = text_ids(model, text)
        target = args.target + len(ids) if args.target < 0 else args.target
        try:
            scores = inspect.attribution(model, ids, target, method=args.method, steps=args.steps)
        except (ValueError, NotImplementedError) as error:
            raise UsageError(f"{error} (the text has {len(ids)} tokens)") from None
        print(_attribution_lines(pieces(tokenizer_of(model), ids), scores, target, args.method))
        return None


def _attribution_lines(labels: list[str], scores, target: int, method: str) -> str:
    """One line per token of the prefix: position, piece, score and a bar as long as |score|."""
    width = max(len(label) for label in labels[: target + 1])
    largest = max(float(abs(scores).max()), 1e-30)
    lines = [f"{method} for {labels[target]!r} at position {target}:"]
    for position, (label, score) in enumerate(zip(labels[:target], scores, strict=True)):
        bar = "█" * round(20 * abs(float(score)) / largest)
        lines.append(f"{position:>4}  {label:<{width}}  {float(score):+.4f}  {bar}")
    lines.append(f"{target:>4}  {labels[target]:<{width}}  (target)")
    return "\n".join(lines)


def load_ipython_extension(ipython: Any) -> None:
    """Registers the inspector magics (``%load_ext kerasllm_widget``)."""
    ipython.register_magics(InspectorMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Removes the inspector magics (``%unload_ext kerasllm_widget``)."""
    magics = ipython.magics_manager.magics
    for kind, name in (
        ("cell", "tokens"),
        ("cell", "preprocess"),
        ("line", "attention"),
        ("cell", "lens"),
        ("cell", "attribution"),
    ):
        magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop("InspectorMagics", None)
