"""KERAS_BACKEND=torch: the model, preprocessor, fit, generate and export agree with JAX.

Keras picks its backend once per process, so the torch side runs in a subprocess (this file, run
as a script) on a preset that the JAX side wrote; both sides' results are compared here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Torch comes with the reference extra (CPU build), like transformers.
pytestmark = pytest.mark.reference

HERE = Path(__file__).resolve().parent
PROMPT = "The sky is"


def _run_checks(preset: Path, out: Path) -> dict:
    """Everything both backends do; arrays go to ``out`` as .npy, the rest is returned."""
    import keras
    from tiny_llama import CORPUS

    from kerasllm_widget.generation.events import DoneEvent
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM
    from kerasllm_widget.models.llama3_lora import lora_layers

    class BatchLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    model = Llama3CausalLM.from_preset(str(preset))
    features, labels, weights = model.preprocessor(CORPUS[:4], sequence_length=32)
    np.save(out / "token_ids.npy", features["token_ids"])
    np.save(out / "weights.npy", weights)
    np.save(out / "logits.npy", keras.ops.convert_to_numpy(model(features)))
    done = [e for e in model.stream(PROMPT, max_new_tokens=8) if isinstance(e, DoneEvent)][0]
    result = {
        "backend": keras.backend.backend(),
        "generated": model.generate([PROMPT, "A cat"], max_new_tokens=8, sampler="greedy"),
        "streamed_ids": list(done.token_ids),
        "sampled": model.generate(PROMPT, max_new_tokens=8, sampler="top_k", seed=3),
    }
    # The logit lens and attention rollout run on any backend; the gradient methods need JAX.
    from kerasllm_widget import inspect

    ids = features["token_ids"][0][:12]
    lens = inspect.logit_lens(model, ids, top_k=3)
    for name in ("top_ids", "top_probs", "target_rank", "entropy"):
        np.save(out / f"lens_{name}.npy", getattr(lens, name))
    np.save(out / "rollout.npy", inspect.attribution(model, ids, 11, method="attention_rollout"))
    try:
        result["gradient"] = inspect.attribution(model, ids, 11).tolist()
    except NotImplementedError as error:
        result["gradient"] = str(error)
    model.backbone.enable_lora(4)
    rng = np.random.default_rng(0)  # the backends' random initialisers draw different numbers
    for dense in lora_layers(model.backbone).values():
        dense.lora_kernel_a.assign(rng.normal(0, 0.2, dense.lora_kernel_a.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    losses = BatchLosses()
    model.fit(CORPUS, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[losses])
    result["losses"] = losses.losses
    result["trainable"] = sorted(w.path.split("/", 1)[1] for w in model.trainable_weights)
    model.save_to_preset(out / "trained")
    np.save(out / "trained_logits.npy", keras.ops.convert_to_numpy(model(features)))
    return result


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from tiny_llama import tiny_causal_lm

    root = tmp_path_factory.mktemp("backends")
    tiny_causal_lm(seed=13).save_to_preset(root / "preset")
    (root / "jax").mkdir()
    (root / "torch").mkdir()
    jax_result = _run_checks(root / "preset", root / "jax")
    env = {
        **os.environ,
        "KERAS_BACKEND": "torch",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]),
    }
    completed = subprocess.run(
        [sys.executable, __file__, str(root)], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    torch_result = json.loads((root / "torch" / "result.json").read_text())
    return root, jax_result, torch_result


def test_torch_process_really_ran_torch(both):
    _, jax_result, torch_result = both
    assert (jax_result["backend"], torch_result["backend"]) == ("jax", "torch")


def test_same_preprocessing_and_logits(both):
    root, _, _ = both
    for name in ("token_ids.npy", "weights.npy"):
        np.testing.assert_array_equal(np.load(root / "jax" / name), np.load(root / "torch" / name))
    jax_logits, torch_logits = (
        np.load(root / "jax" / "logits.npy"),
        np.load(root / "torch" / "logits.npy"),
    )
    assert jax_logits.std() > 0.1
    assert np.abs(jax_logits - torch_logits).max() < 1e-4


def test_same_generations(both):
    _, jax_result, torch_result = both
    assert torch_result["generated"] == jax_result["generated"]
    assert torch_result["streamed_ids"] == jax_result["streamed_ids"]
    # The same sampler functions and seed draw the same tokens from (nearly) the same logits.
    assert torch_result["sampled"] == jax_result["sampled"]


def test_same_logit_lens_and_rollout(both):
    root, jax_result, torch_result = both
    for name in ("top_ids", "target_rank"):
        np.testing.assert_array_equal(
            np.load(root / "torch" / f"lens_{name}.npy"), np.load(root / "jax" / f"lens_{name}.npy")
        )
    for name in ("lens_top_probs.npy", "lens_entropy.npy", "rollout.npy"):
        np.testing.assert_allclose(
            np.load(root / "torch" / name), np.load(root / "jax" / name), atol=1e-5
        )
    assert len(jax_result["gradient"]) == 11
    assert "needs the JAX backend" in torch_result["gradient"]


def test_same_lora_training_and_export(both):
    from kerasllm_widget.checkpoints.presets import load_checkpoint

    root, jax_result, torch_result = both
    assert (
        torch_result["trainable"] == jax_result["trainable"] and len(jax_result["trainable"]) == 8
    )
    assert torch_result["losses"] == pytest.approx(jax_result["losses"], rel=1e-4)
    assert torch_result["losses"][-1] < torch_result["losses"][0]
    np.testing.assert_allclose(
        np.load(root / "torch" / "trained_logits.npy"),
        np.load(root / "jax" / "trained_logits.npy"),
        atol=1e-3,
    )
    # The torch-trained export (LoRA merged) holds the same tensors as the JAX-trained one.
    ours, theirs = (
        load_checkpoint(str(root / "jax" / "trained")),
        load_checkpoint(str(root / "torch" / "trained")),
    )
    assert set(ours.tensor_infos) == set(theirs.tensor_infos)
    for name in ours.tensor_infos:
        np.testing.assert_allclose(theirs.read_tensor(name), ours.read_tensor(name), atol=1e-4)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    result = _run_checks(root / "preset", root / "torch")
    (root / "torch" / "result.json").write_text(json.dumps(result))
