"""The inspector magics in a real IPython shell."""

from __future__ import annotations

import subprocess
import sys

import pytest
from inspect_support import tiny_chat_model
from IPython.core.error import UsageError


@pytest.fixture(scope="module")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kerasllm_widget")
    yield ip
    ip.run_line_magic("unload_ext", "kerasllm_widget")


def test_load_ext_registers_the_three_magics(shell):
    assert shell.find_cell_magic("tokens") is not None
    assert shell.find_cell_magic("preprocess") is not None
    assert shell.find_line_magic("attention") is not None


def test_tokens_on_a_named_preset(shell, smollm2_gguf):
    from kerasllm_widget.widgets.token_inspector import TokenInspector

    widget = shell.run_cell_magic("tokens", str(smollm2_gguf), "Hello world\n")
    assert isinstance(widget, TokenInspector)
    assert widget.text == "Hello world"
    assert widget.table.ids.tolist() == [19556, 905]
    widget.close()


def test_tokens_and_preprocess_use_the_last_model(shell, llama32_instruct_tokenizer):
    tiny = tiny_chat_model()
    shell.user_ns["older"] = tiny
    shell.user_ns["model"] = tiny  # the last model in the namespace
    widget = shell.run_cell_magic("tokens", "", "The cat sat")
    assert widget.source is tiny
    widget.close()
    shell.user_ns["llama"] = llama32_instruct_tokenizer  # a variable can be named too
    table = shell.run_cell_magic("preprocess", "--sequence-length 6 llama", "Hello\nHi!\n\n")
    assert table.texts == ["Hello", "Hi!"]
    assert table.table.token_ids.tolist()[0] == [128000, 9906, 128009, 0, 0, 0]
    table.close()


def test_help_prints_usage_and_shows_no_widget(shell, capsys):
    assert shell.run_cell_magic("tokens", "--help", "ignored") is None
    assert "%%tokens" in capsys.readouterr().out
    assert shell.run_cell_magic("preprocess", "--help", "Hello") is None
    assert "--sequence-length" in capsys.readouterr().out
    assert shell.run_line_magic("attention", "--help") is None
    assert "--layer" in capsys.readouterr().out


def test_mistakes_are_usage_errors(shell):
    with pytest.raises(UsageError, match="sequence-length"):
        shell.run_cell_magic("preprocess", "--sequence-length 0", "Hello")
    with pytest.raises(UsageError, match="one text per line"):
        shell.run_cell_magic("preprocess", "", "\n\n")
    with pytest.raises(UsageError, match="unexpected"):
        shell.run_cell_magic("tokens", "a b", "Hello")
    with pytest.raises(UsageError, match="no variable"):
        shell.run_line_magic("attention", "missing_chat")


def test_attention_on_the_last_chat(shell):
    from kerasllm_widget.widgets.attention_view import AttentionView
    from kerasllm_widget.widgets.chat_widget import ChatWidget

    chat = ChatWidget(tiny_chat_model(), temperature=0.0, max_new_tokens=3)
    shell.user_ns["chat"] = chat
    view = shell.run_line_magic("attention", "--layer 1 --head 2")
    assert isinstance(view, AttentionView) and view.source.chat is chat
    assert (view.layer, view.head, view.follows_chat) == (1, 2, True)
    view.close()
    chat.close()


def test_extension_loads_from_ipython_configuration():
    code = "print(bool(get_ipython().find_cell_magic('tokens')))"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "IPython",
            "--no-banner",
            "--InteractiveShellApp.extensions=['kerasllm_widget']",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True")
