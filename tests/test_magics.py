"""The inspector magics in a real IPython shell."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
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


def test_load_ext_registers_the_magics(shell):
    assert shell.find_cell_magic("tokens") is not None
    assert shell.find_cell_magic("preprocess") is not None
    assert shell.find_line_magic("attention") is not None
    assert shell.find_cell_magic("lens") is not None
    assert shell.find_cell_magic("attribution") is not None


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
    assert shell.run_cell_magic("lens", "--help", "Hello") is None
    assert "--top-k" in capsys.readouterr().out
    assert shell.run_cell_magic("attribution", "--help", "Hello") is None
    assert "integrated_gradients" in capsys.readouterr().out


def test_mistakes_are_usage_errors(shell):
    with pytest.raises(UsageError, match="sequence-length"):
        shell.run_cell_magic("preprocess", "--sequence-length 0", "Hello")
    with pytest.raises(UsageError, match="one text per line"):
        shell.run_cell_magic("preprocess", "", "\n\n")
    with pytest.raises(UsageError, match="unexpected"):
        shell.run_cell_magic("tokens", "a b", "Hello")
    with pytest.raises(UsageError, match="no variable"):
        shell.run_line_magic("attention", "missing_chat")


def test_lens_prints_the_top_token_per_layer_and_position(shell, capsys):
    from kerasllm_widget import inspect
    from kerasllm_widget.inspect._sources import text_ids
    from kerasllm_widget.inspect.pieces import piece

    tiny = tiny_chat_model()
    shell.user_ns["model"] = tiny
    assert shell.run_cell_magic("lens", "--top-k 3", "The cat sat\n") is None
    out = capsys.readouterr().out
    ids = text_ids(tiny, "The cat sat")  # as the model reads it: with its start token
    lens = inspect.logit_lens(tiny, ids, top_k=3)
    tokenizer = tiny.preprocessor.tokenizer
    assert out.strip() == lens.text_table(lambda i: piece(tokenizer, i)).strip()
    rows = out.splitlines()
    header = rows[0].split("│")[1].split()
    assert header[0] == "<|begin…"  # cut to the cell's width
    assert header[1:] == [piece(tokenizer, i) for i in ids[1:]]
    assert [r.split("│")[0].strip() for r in rows[3:5]] == ["0", "1"]  # one row per layer
    last = rows[-1].split("│")[1]
    assert last.count("·") == 2  # the top 3 after the last token


def test_attribution_prints_a_score_per_token(shell, capsys):
    from kerasllm_widget import inspect
    from kerasllm_widget.inspect._sources import text_ids

    tiny = tiny_chat_model()
    shell.user_ns["model"] = tiny
    ids = text_ids(tiny, "The cat sat on")
    shell.run_cell_magic("attribution", "--target -1 --method attention_rollout", "The cat sat on")
    lines = capsys.readouterr().out.strip().splitlines()
    target = len(ids) - 1
    assert lines[0].startswith("attention_rollout for") and f"position {target}" in lines[0]
    scores = [float(line.split()[2]) for line in lines[1:-1]]
    expected = inspect.attribution(tiny, ids, target, method="attention_rollout")
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert lines[-1].endswith("(target)")
    shell.run_cell_magic("attribution", "model --target 2", "The cat sat on")
    assert "grad_x_input for" in capsys.readouterr().out


def test_lens_and_attribution_mistakes_are_usage_errors(shell):
    shell.user_ns["model"] = tiny_chat_model()
    with pytest.raises(UsageError, match="--target N"):
        shell.run_cell_magic("attribution", "", "The cat")
    with pytest.raises(UsageError, match=r"method='saliency' is not allowed: use one of"):
        shell.run_cell_magic("attribution", "--target 1 --method saliency", "The cat")
    with pytest.raises(UsageError, match=r"target_position=9 is not allowed.*<= 4.*has 5 tokens"):
        shell.run_cell_magic("attribution", "--target 9", "The cat")
    with pytest.raises(UsageError, match="--top-k"):
        shell.run_cell_magic("lens", "--top-k 0", "The cat")
    with pytest.raises(UsageError, match="write the text"):
        shell.run_cell_magic("lens", "", "\n")
    shell.user_ns["words"] = tiny_chat_model().preprocessor.tokenizer
    with pytest.raises(UsageError, match="not a model"):
        shell.run_cell_magic("lens", "words", "The cat")


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
