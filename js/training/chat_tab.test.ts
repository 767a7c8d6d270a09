import type { AnyModel } from "@anywidget/types";
import { FakeModel, nextFrame } from "../shared/fake_model";
import { hasTraining, renderTrainingTab } from "./chat_tab";
import type { TrainingModel } from "./protocol";

function monitorState(): TrainingModel & Record<string, unknown> {
  return {
    title: "SmolLM2 learns its name",
    status: "training",
    steps: [
      { step: 1, epoch: 1, loss: 3.0, lr: 0.001, seconds: null },
      { step: 2, epoch: 1, loss: 2.0, lr: 0.001, seconds: 0.5 },
    ],
    epochs: [],
    samples: [],
    progress: { epoch: 1, epochs: 2, step: 2, steps_per_epoch: 2 },
    sample_prompt_text: "",
    error: "",
  };
}

/** A chat model whose widget manager knows one other widget: the training monitor. */
class ChatWithManager extends FakeModel<Record<string, unknown>> {
  constructor(
    state: Record<string, unknown>,
    private monitors: Map<string, FakeModel<Record<string, unknown>>>,
  ) {
    super(state);
  }

  override get widget_manager(): AnyModel["widget_manager"] {
    return {
      get_model: (id: string) => {
        const found = this.monitors.get(id);
        return found
          ? Promise.resolve(found.asModel() as unknown as AnyModel)
          : Promise.reject(new Error(`no widget ${id}`));
      },
    } as AnyModel["widget_manager"];
  }
}

async function settle() {
  await Promise.resolve();
  await nextFrame();
}

describe("Training tab of the chat", () => {
  it("draws the attached monitor, follows a new one, and says how to attach one", async () => {
    const first = new FakeModel(monitorState());
    const second = new FakeModel({ ...monitorState(), title: "Second run", steps: [] });
    const chat = new ChatWithManager(
      { training: null, transcript: [] },
      new Map([
        ["m1", first],
        ["m2", second],
      ]),
    );
    const el = document.createElement("div");
    // biome-ignore lint/suspicious/noExplicitAny: the fake stands in for the chat's model
    const model = chat.asModel() as any;
    expect(hasTraining(model)).toBe(false);
    const cleanup = renderTrainingTab(model, el);
    await settle();
    expect(el.querySelector(".kw-train-none")?.textContent).toContain("chat.training_monitor()");

    chat.kernelSets("training", "IPY_MODEL_m1");
    await settle();
    expect(hasTraining(model)).toBe(true);
    expect(el.querySelector(".kw-train-title")?.textContent).toBe("SmolLM2 learns its name");
    expect(el.querySelector(".kw-train-raw")?.getAttribute("d")).toMatch(/^M.* L/);
    // The monitor's own traits drive the curve: a new step is drawn.
    first.kernelSets("steps", [
      ...monitorState().steps,
      { step: 3, epoch: 2, loss: 1.0, lr: 0.001, seconds: 0.5 },
    ]);
    await settle();
    expect(el.querySelector(".kw-train-stats")?.textContent).toContain("loss 1");
    // Stop goes to the monitor's own comm, not the chat's.
    el.querySelector<HTMLButtonElement>(".kw-train-stop")?.click();
    expect(first.sent).toEqual([{ kind: "training.stop" }]);
    expect(chat.sent).toEqual([]);

    chat.kernelSets("training", "IPY_MODEL_m2");
    await settle();
    expect(el.querySelector(".kw-train-title")?.textContent).toBe("Second run");
    expect(first.listenerCount()).toBe(0);

    chat.kernelSets("training", "IPY_MODEL_missing");
    await settle();
    expect(el.querySelector(".kw-train-error")?.textContent).toContain("no widget missing");

    cleanup();
    expect(chat.listenerCount()).toBe(0);
    expect(second.listenerCount()).toBe(0);
  });
});
