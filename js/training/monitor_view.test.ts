import { FakeModel, nextFrame } from "../shared/fake_model";
import { renderMonitor } from "./monitor_view";
import { TRAINING_REQUEST, type TrainingModel } from "./protocol";

function state(): TrainingModel {
  return {
    title: "LoRA fine-tuning",
    status: "idle",
    steps: [],
    epochs: [],
    samples: [],
    progress: {},
    sample_prompt_text: "",
    error: "",
  };
}

let model: FakeModel<TrainingModel & Record<string, unknown>>;
let el: HTMLElement;
let cleanup: () => void;

beforeEach(async () => {
  model = new FakeModel(state() as TrainingModel & Record<string, unknown>);
  el = document.createElement("div");
  cleanup = renderMonitor(model.asModel(), el);
  await nextFrame();
});

afterEach(() => cleanup());

describe("TrainingMonitor view", () => {
  it("waits before the first step, with Stop disabled", () => {
    expect(el.querySelector(".kw-train-title")?.textContent).toBe("LoRA fine-tuning");
    expect(el.querySelector(".kw-train-empty")?.textContent).toBe("waiting");
    expect(el.querySelector<HTMLButtonElement>(".kw-train-stop")?.disabled).toBe(true);
  });

  it("draws steps, epochs, learning rate and samples as they arrive", async () => {
    model.kernelSets("status", "training");
    model.kernelSets("progress", {
      epoch: 1,
      epochs: 3,
      step: 4,
      steps_per_epoch: 4,
      seconds_per_step: 0.12,
    });
    model.kernelSets("steps", [
      { step: 1, epoch: 1, loss: 4.0, lr: null, seconds: null },
      { step: 2, epoch: 1, loss: Number.NaN, lr: null, seconds: 0.1 },
      { step: 3, epoch: 1, loss: 3.0, lr: null, seconds: 0.1 },
      { step: 4, epoch: 1, loss: 2.5, lr: 0.0002, seconds: 0.12 },
    ]);
    model.kernelSets("epochs", [
      { epoch: 1, loss: 3.1, val_loss: 2.9, metrics: { accuracy: 0.25 }, seconds: 1.5 },
    ]);
    model.kernelSets("sample_prompt_text", "What is Keras?");
    model.kernelSets("samples", [{ epoch: 1, prompt: "What is Keras?", text: "A library." }]);
    await nextFrame();

    expect(el.querySelector(".kw-train-stats")?.textContent).toBe(
      "epoch 1/3 · step 4/4 · 120 ms/step · lr 2.00e-4 · loss 2.5",
    );
    // The NaN loss of step 2 splits the raw curve in two segments.
    const raw = el.querySelector(".kw-train-raw")?.getAttribute("d") ?? "";
    expect(raw.match(/M/g)?.length).toBe(2);
    expect(el.querySelectorAll(".kw-train-epoch circle")).toHaveLength(1);
    expect(el.querySelectorAll(".kw-train-val circle")).toHaveLength(1);
    expect(el.querySelector<HTMLElement>(".kw-train-rate")?.hidden).toBe(false);
    const cells = [...el.querySelectorAll(".kw-train-epochs td")].map((td) => td.textContent);
    expect(cells).toEqual(["1", "3.1", "2.9", "0.25", "1.50 s"]);
    const samples = [...el.querySelectorAll(".kw-train-samples li")].map((li) => li.textContent);
    expect(samples).toEqual(["Prompt: What is Keras?", "epoch 1A library."]);
  });

  it("sends stop while training", async () => {
    model.kernelSets("status", "training");
    await nextFrame();
    const stop = el.querySelector<HTMLButtonElement>(".kw-train-stop");
    expect(stop?.disabled).toBe(false);
    stop?.click();
    expect(model.sent).toEqual([{ kind: TRAINING_REQUEST.stop }]);
  });

  it("shows errors and removes its listeners on cleanup", async () => {
    model.kernelSets("error", "sample generation failed: out of memory");
    await nextFrame();
    expect(el.querySelector(".kw-train-error")?.textContent).toContain("out of memory");
    cleanup();
    expect(model.listenerCount()).toBe(0);
    cleanup = () => {};
  });
});
