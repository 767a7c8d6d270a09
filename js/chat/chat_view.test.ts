import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { chatState, FakeModel, nextFrame, READY } from "../shared/fake_model";
import type { ChatModel, TranscriptEntry } from "../shared/protocol";
import { renderChat } from "./chat_view";

let model: FakeModel<ChatModel>;
let el: HTMLElement;
let cleanup: () => void;

function $(selector: string): HTMLElement {
  const found = el.querySelector<HTMLElement>(selector);
  if (!found) throw new Error(`no ${selector}`);
  return found;
}

function typeAndPress(text: string, init: KeyboardEventInit = {}): void {
  const input = $(".kw-input") as HTMLTextAreaElement;
  input.value = text;
  input.dispatchEvent(
    new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true, ...init }),
  );
}

function startReply(userText: string): void {
  const entries: TranscriptEntry[] = [
    { id: "u1", role: "user", content: userText, status: "sent", request_id: "k1" },
    { id: "a1", role: "assistant", content: "", status: "streaming", request_id: "k1" },
  ];
  model.kernelSets("status", { ...READY, state: "generating" });
  model.kernelSets("transcript", entries);
}

function tokens(start: number, texts: string[]) {
  return {
    kind: "chat.token",
    id: "k1",
    reply_id: "a1",
    tokens: texts.map((text, i) => ({
      index: start + i,
      token_id: i,
      text,
      logprob: -1,
      top_k: [],
    })),
  };
}

beforeEach(() => {
  model = new FakeModel(chatState());
  el = document.createElement("div");
  document.body.append(el);
  cleanup = renderChat(model.asModel(), el);
});

afterEach(() => {
  cleanup();
  el.remove();
});

describe("ChatView", () => {
  it("sends on Enter and clears the box; Shift+Enter does not send", () => {
    typeAndPress("first line", { shiftKey: true });
    expect(model.sent).toHaveLength(0);
    typeAndPress("Hello there");
    expect(model.sent).toHaveLength(1);
    expect(model.sent[0]).toMatchObject({ kind: "chat.send", text: "Hello there" });
    expect(($(".kw-input") as HTMLTextAreaElement).value).toBe("");
  });

  it("streams a reply: each batch shows more text, rendered as Markdown", async () => {
    startReply("Say hi");
    await nextFrame();
    expect($('[data-role="assistant"]').dataset.status).toBe("streaming");
    model.kernelSends(tokens(0, ["**Hi", "**"]));
    await nextFrame();
    expect($('[data-role="assistant"] strong').textContent).toBe("Hi");
    model.kernelSends(tokens(2, [" there"]));
    await nextFrame();
    expect($('[data-role="assistant"] .kw-markdown').textContent?.trim()).toBe("Hi there");
  });

  it("turns Send into Stop while generating; Stop and Esc send chat.cancel", async () => {
    startReply("Tell me a story");
    await nextFrame();
    const button = $(".kw-send");
    expect(button.dataset.mode).toBe("stop");
    button.click();
    $(".kw-input").dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    const kinds = model.sent.map((m) => (m as { kind: string }).kind);
    expect(kinds).toEqual(["chat.cancel", "chat.cancel"]);
  });

  it("refuses a second send while generating, visibly, and keeps the text", async () => {
    startReply("one");
    await nextFrame();
    typeAndPress("two");
    expect(model.sent).toHaveLength(0);
    expect($(".kw-toast").hidden).toBe(false);
    expect($(".kw-toast").textContent).toMatch(/Stop/);
    expect(($(".kw-input") as HTMLTextAreaElement).value).toBe("two");
  });

  it("shows a generation error as an error bubble and re-enables input", async () => {
    startReply("break");
    await nextFrame();
    model.kernelSets("status", READY);
    model.kernelSets("transcript", [
      { id: "u1", role: "user", content: "break", status: "done", request_id: "k1" },
      {
        id: "a1",
        role: "assistant",
        content: "partial",
        status: "error",
        request_id: "k1",
        error: "RuntimeError: boom",
      },
    ]);
    await nextFrame();
    expect($(".kw-error").textContent).toContain("RuntimeError: boom");
    expect($(".kw-send").dataset.mode).toBe("send");
    expect(($(".kw-input") as HTMLTextAreaElement).disabled).toBe(false);
    expect($('[data-role="user"]').textContent).toContain("break");
  });

  it("asks for a snapshot when it missed the start of a reply, and uses it", async () => {
    startReply("story");
    await nextFrame();
    model.kernelSends(tokens(3, ["D"]));
    expect(model.sent.at(-1)).toMatchObject({ kind: "chat.sync" });
    model.kernelSends({
      kind: "chat.snapshot",
      id: (model.sent.at(-1) as { id: string }).id,
      reply_id: "a1",
      text: "ABCD",
      count: 4,
      tokens: ["A", "B", "C", "D"].map((text, index) => ({
        index,
        token_id: index,
        text,
        logprob: -1,
        top_k: [],
      })),
    });
    model.kernelSends(tokens(4, ["E"]));
    await nextFrame();
    expect($('[data-role="assistant"] .kw-markdown').textContent?.trim()).toBe("ABCDE");
  });

  it("renders user text as text even when it looks like HTML", async () => {
    model.kernelSets("transcript", [
      {
        id: "u1",
        role: "user",
        content: "<img src=x onerror=alert(1)>",
        status: "done",
        request_id: "k",
      },
    ]);
    await nextFrame();
    expect(el.querySelector("img")).toBeNull();
    expect($('[data-role="user"] .kw-text').textContent).toBe("<img src=x onerror=alert(1)>");
  });

  it("edits and resends a user turn with chat.edit", async () => {
    model.kernelSets("transcript", [
      { id: "u1", role: "user", content: "Wrong question", status: "done", request_id: "k" },
      { id: "a1", role: "assistant", content: "An answer", status: "done", request_id: "k" },
    ]);
    await nextFrame();
    $('[data-role="user"] .kw-edit').click();
    const area = $(".kw-edit-input") as HTMLTextAreaElement;
    area.value = "Right question";
    $(".kw-edit-save").click();
    expect(model.sent.at(-1)).toMatchObject({
      kind: "chat.edit",
      message_id: "u1",
      text: "Right question",
    });
  });

  it("offers regenerate on the last reply only", async () => {
    model.kernelSets("transcript", [
      { id: "u1", role: "user", content: "q1", status: "done", request_id: "k" },
      { id: "a1", role: "assistant", content: "r1", status: "done", request_id: "k" },
      { id: "u2", role: "user", content: "q2", status: "done", request_id: "k2" },
      { id: "a2", role: "assistant", content: "r2", status: "done", request_id: "k2" },
    ]);
    await nextFrame();
    const buttons = el.querySelectorAll<HTMLElement>(".kw-regenerate");
    expect(buttons).toHaveLength(1);
    expect(buttons[0]?.closest("[data-id]")?.getAttribute("data-id")).toBe("a2");
    buttons[0]?.click();
    expect(model.sent.at(-1)).toMatchObject({ kind: "chat.regenerate" });
  });

  it("shows the truncation notice and why a reply stopped", async () => {
    model.kernelSets("transcript", [
      { id: "u1", role: "user", content: "q", status: "done", request_id: "k" },
      {
        id: "a1",
        role: "assistant",
        content: "cut",
        status: "cancelled",
        stop_reason: "cancelled",
        notice: "2 earlier turns were dropped to fit the context.",
        request_id: "k",
      },
    ]);
    await nextFrame();
    expect($(".kw-notice").textContent).toContain("dropped to fit");
    expect($(".kw-meta").textContent).toContain("stopped");
  });

  it("binds the settings drawer to the traitlets in both directions", async () => {
    $(".kw-settings-toggle").click();
    expect($(".kw-drawer").hidden).toBe(false);
    const temperature = $('input[name="temperature"]') as HTMLInputElement;
    expect(temperature.value).toBe("0.7");
    temperature.value = "0.2";
    temperature.dispatchEvent(new Event("change"));
    expect(model.get("temperature")).toBe(0.2);
    expect(model.saves).toBe(1);
    temperature.value = "-3";
    temperature.dispatchEvent(new Event("change"));
    expect(model.get("temperature")).toBe(0.2);
    expect(temperature.value).toBe("0.2");
    model.kernelSets("top_k", 7);
    expect(($('input[name="top_k"]') as HTMLInputElement).value).toBe("7");
    const seed = $('input[name="seed"]') as HTMLInputElement;
    seed.value = "42";
    seed.dispatchEvent(new Event("change"));
    expect(model.get("seed")).toBe(42);
    seed.value = "";
    seed.dispatchEvent(new Event("change"));
    expect(model.get("seed")).toBeNull();
  });

  it("shows model facts and the loading state in the status line", async () => {
    expect($(".kw-status-model").textContent).toBe("tiny · float32 · jax · cpu");
    model.kernelSets("status", { ...READY, state: "loading", message: "Loading tiny" });
    await nextFrame();
    expect($(".kw-status").dataset.state).toBe("loading");
    expect($(".kw-status-state").textContent).toContain("Loading tiny");
  });

  it("keeps a notice on how the model runs in the status line, whatever the state", async () => {
    expect($(".kw-status-notice").hidden).toBe(true);
    const notice = "Native CPU decode kernel off: no C++ compiler found.";
    model.kernelSets("status", { ...READY, notice });
    await nextFrame();
    expect($(".kw-status-notice").hidden).toBe(false);
    expect($(".kw-status-notice").textContent).toBe(notice);
    model.kernelSets("status", { ...READY, state: "generating", notice });
    await nextFrame();
    expect($(".kw-status-notice").textContent).toBe(notice);
  });

  it("copies a message's text, not its rendered HTML", async () => {
    const copied: string[] = [];
    Object.defineProperty(window, "isSecureContext", { value: true, configurable: true });
    Object.defineProperty(navigator, "clipboard", {
      value: { writeText: async (text: string) => void copied.push(text) },
      configurable: true,
    });
    model.kernelSets("transcript", [
      { id: "u1", role: "user", content: "q", status: "done", request_id: "k" },
      { id: "a1", role: "assistant", content: "**bold** `code`", status: "done", request_id: "k" },
    ]);
    await nextFrame();
    const button = $('[data-role="assistant"] .kw-copy');
    button.click();
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(copied).toEqual(["**bold** `code`"]);
    expect(button.textContent).toBe("Copied");
  });

  it("removes its listeners when the view is closed", () => {
    expect(model.listenerCount()).toBeGreaterThan(0);
    cleanup();
    expect(model.listenerCount()).toBe(0);
    cleanup = () => {};
  });
});
