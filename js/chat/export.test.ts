import { describe, expect, it } from "vitest";
import type { TranscriptEntry } from "../shared/protocol";
import { exportFilename, transcriptToJson, transcriptToMarkdown } from "./export";

const transcript: TranscriptEntry[] = [
  { id: "u1", role: "user", content: "What is 2+2?", status: "done", request_id: "k1" },
  {
    id: "a1",
    role: "assistant",
    content: "**4**",
    status: "done",
    request_id: "k1",
    stop_reason: "stop_token",
  },
  { id: "u2", role: "user", content: "And 3+3?", status: "done", request_id: "k2" },
  {
    id: "a2",
    role: "assistant",
    content: "6",
    status: "cancelled",
    stop_reason: "cancelled",
    request_id: "k2",
  },
  { id: "u3", role: "user", content: "not sent yet", status: "queued", request_id: "k3" },
];
const context = {
  transcript,
  modelInfo: { name: "SmolLM2-135M-Instruct" },
  systemPrompt: "Be brief.\nVery brief.",
  settings: { temperature: 0.5 },
};

describe("export", () => {
  it("writes the kernel's whole tree into the JSON, beside the visible messages", () => {
    const tree = { format: "kerasllm-widget.chat-tree/1", branches: [{ ids: ["a", "b"] }] };
    const parsed = JSON.parse(transcriptToJson({ ...context, tree }));
    expect(parsed.tree).toEqual(tree);
    expect(parsed.messages).toHaveLength(4);
    expect(JSON.parse(transcriptToJson(context)).tree).toBeUndefined();
  });

  it("writes JSON with roles, contents and settings, without queued turns", () => {
    const parsed = JSON.parse(transcriptToJson(context));
    expect(parsed.model.name).toBe("SmolLM2-135M-Instruct");
    expect(parsed.settings.temperature).toBe(0.5);
    expect(parsed.messages.map((m: { role: string }) => m.role)).toEqual([
      "user",
      "assistant",
      "user",
      "assistant",
    ]);
    expect(parsed.messages[3].status).toBe("cancelled");
  });

  it("writes Markdown a person can read", () => {
    const md = transcriptToMarkdown(context);
    expect(md).toContain("# Chat with SmolLM2-135M-Instruct");
    expect(md).toContain("> Be brief.\n> Very brief.");
    expect(md).toContain("## User\n\nWhat is 2+2?");
    expect(md).toContain("## Assistant\n\n**4**");
    expect(md).toContain("*(stopped)*");
    expect(md).not.toContain("not sent yet");
  });

  it("names files after the model and time, with safe characters", () => {
    const name = exportFilename(
      { name: "hf://meta/Llama 3" },
      "md",
      new Date(Date.UTC(2025, 0, 2, 3, 4, 5)),
    );
    expect(name).toBe("hf_meta_Llama_3-2025-01-02-03-04-05.md");
  });
});
