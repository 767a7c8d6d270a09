// The transcript as files a user can keep: JSON for programs, Markdown for people. Markdown is the
// conversation as shown; JSON also holds the kernel's whole tree (every branch, `ChatState.to_json`).

import type { ModelInfo, TranscriptEntry } from "../shared/protocol";

export interface ExportContext {
  transcript: TranscriptEntry[];
  modelInfo: ModelInfo;
  systemPrompt: string;
  settings: Record<string, unknown>;
  /** The kernel's conversation tree (`ChatState.to_json`), every branch with its token ids. */
  tree?: unknown;
}

/** Only turns that reached the model; queued and failed ones are not part of the conversation. */
function conversation(transcript: TranscriptEntry[]): TranscriptEntry[] {
  return transcript.filter((entry) => entry.status !== "queued");
}

export function transcriptToJson(context: ExportContext): string {
  const messages = conversation(context.transcript).map((entry) => {
    const out: Record<string, unknown> = { role: entry.role, content: entry.content };
    if (entry.role === "assistant") {
      out.status = entry.status;
      if (entry.stop_reason) out.stop_reason = entry.stop_reason;
      if (entry.error) out.error = entry.error;
      if (entry.notice) out.notice = entry.notice;
      if (entry.stats) out.stats = entry.stats;
    }
    return out;
  });
  const document = {
    format: "kerasllm-widget.chat/1",
    model: context.modelInfo,
    system_prompt: context.systemPrompt,
    settings: context.settings,
    messages,
    ...(context.tree === undefined ? {} : { tree: context.tree }),
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}

function quoteBlock(text: string): string {
  return text
    .split("\n")
    .map((line) => (line ? `> ${line}` : ">"))
    .join("\n");
}

export function transcriptToMarkdown(context: ExportContext): string {
  const lines: string[] = [];
  const name = context.modelInfo.name ?? "model";
  lines.push(`# Chat with ${name}`, "");
  if (context.systemPrompt)
    lines.push("**System prompt**", "", quoteBlock(context.systemPrompt), "");
  for (const entry of conversation(context.transcript)) {
    if (entry.role === "user") {
      lines.push("## User", "", entry.content, "");
    } else {
      lines.push("## Assistant", "");
      if (entry.notice) lines.push(`*${entry.notice}*`, "");
      if (entry.content) lines.push(entry.content, "");
      if (entry.status === "cancelled") lines.push("*(stopped)*", "");
      if (entry.error) lines.push(`*Error: ${entry.error}*`, "");
    }
  }
  return `${lines.join("\n").trimEnd()}\n`;
}

export function exportFilename(modelInfo: ModelInfo, extension: string, date = new Date()): string {
  const stamp = date.toISOString().slice(0, 19).replace(/[:T]/g, "-");
  const model = (modelInfo.name ?? "chat").replace(/[^\w.-]+/g, "_").slice(0, 60);
  return `${model}-${stamp}.${extension}`;
}
