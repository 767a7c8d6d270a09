// The Chat tab: toolbar, status line, settings drawer, transcript and composer, wired to the model.
//
// The transcript traitlet is the durable record; the reply being generated arrives as `chat.token`
// batches and is held in a StreamAssembler until the kernel writes it into the transcript. A view
// that opens mid-reply asks for a `chat.snapshot` and continues from there.

import type { AnyModel } from "@anywidget/types";
import { ATTRIBUTION_TAB } from "../attribution/chat_tab";
import { download, h, perFrame } from "../shared/dom";
import {
  type ChatModel,
  type ErrorMessage,
  type ModelInfo,
  parseResponse,
  REQUEST,
  type Request,
  request,
  type Status,
  type TokenRecord,
  type TranscriptEntry,
  type TreeMessage,
} from "../shared/protocol";
import { StreamAssembler } from "../shared/stream";
import { requestTab } from "../shared/tab_requests";
import { Composer } from "./composer";
import {
  type ExportContext,
  exportFilename,
  transcriptToJson,
  transcriptToMarkdown,
} from "./export";
import { SettingsDrawer } from "./settings";
import { StatusLine } from "./status_line";
import type { TokenColouring } from "./token_colours";
import type { TokenAction } from "./token_popover";
import { TranscriptView } from "./transcript";

/** How many alternatives the engine records per token while replies are coloured. */
const COLOURING_ALTERNATIVES = 5;

const DEFAULT_STATUS: Status = {
  state: "ready",
  message: "",
  tokens_used: 0,
  context_length: 0,
  queued: 0,
  time_to_first_token_s: null,
  decode_tokens_per_s: null,
  loading_since: null,
};

export function renderChat(model: AnyModel<ChatModel>, el: HTMLElement): () => void {
  const view = new ChatView(model);
  el.append(view.el);
  return () => view.dispose();
}

export class ChatView {
  readonly el: HTMLElement;
  private readonly assembler = new StreamAssembler();
  private readonly transcript: TranscriptView;
  private readonly composer: Composer;
  private readonly settings: SettingsDrawer;
  private readonly statusLine = new StatusLine();
  private readonly toastEl: HTMLElement;
  private readonly ownRequests = new Set<string>();
  private readonly disposers: Array<() => void> = [];
  private toastTimer: ReturnType<typeof setTimeout> | null = null;
  private loadingTimer: ReturnType<typeof setInterval> | null = null;
  private readonly redraw = perFrame(() => this.draw());
  /** The engine's token records of each reply this view saw stream (for the colouring). */
  private readonly replyTokens = new Map<string, TokenRecord[]>();
  /** The JSON exports waiting for the kernel's conversation tree, by request id. */
  private readonly exports = new Map<string, ExportContext>();
  /** The actions of a token's popover; one more analysis of a token is one more line here. */
  private readonly tokenActions: readonly TokenAction[] = [
    {
      label: "Continue from here",
      title: "Let the model continue the reply from this token on (a new branch)",
      name: "kw-branch-here",
      run: (target) => this.branch(target.entry, target.index, null, null),
    },
    {
      label: "Attribute",
      title: "Which earlier tokens pushed the model towards this one (the Attribution tab)",
      name: "kw-alternatives-attribute",
      run: (target) =>
        requestTab(this.el, ATTRIBUTION_TAB, {
          reply_id: target.entry.id,
          token_index: target.index,
        }),
    },
  ];

  constructor(private readonly model: AnyModel<ChatModel>) {
    this.transcript = new TranscriptView({
      regenerate: () => this.send(request(REQUEST.regenerate, {})),
      edit: (entry, text) => this.send(request(REQUEST.edit, { message_id: entry.id, text })),
      branch: (entry, index, tokenId, text) => this.branch(entry, index, tokenId, text),
      loadTokens: (entry) => this.send(request(REQUEST.getTokens, { message_id: entry.id })),
      switchTo: (entry, index) =>
        this.send(request(REQUEST.switch, { message_id: entry.id, index })),
      tokenActions: this.tokenActions,
    });
    this.transcript.setColouring(null, (id) => this.tokensOf(id));
    this.composer = new Composer({
      send: (text) => this.send(request(REQUEST.send, { text })),
      stop: () => this.stop(),
      refuse: (reason) => this.toast(reason),
    });
    this.settings = new SettingsDrawer(model);
    this.toastEl = h("div", {
      class: "kw-toast",
      role: "status",
      "aria-live": "polite",
      hidden: true,
    });

    const settingsButton = h(
      "button",
      { class: "kw-btn kw-settings-toggle", "aria-expanded": "false", title: "Settings" },
      "Settings",
    );
    settingsButton.addEventListener("click", () => {
      this.settings.toggle();
      settingsButton.setAttribute("aria-expanded", String(this.settings.open));
    });
    const colourBy = h(
      "select",
      {
        class: "kw-colour-by",
        "aria-label": "Colour replies",
        title: "Show replies token by token, coloured (replies streamed while this view is open)",
      },
      h("option", { value: "" }, "Plain replies"),
      h("option", { value: "probability" }, "Colour by probability"),
      h("option", { value: "entropy" }, "Colour by entropy"),
    );
    colourBy.addEventListener("change", () =>
      this.colourBy((colourBy.value || null) as TokenColouring | null),
    );
    const toolbar = h(
      "div",
      { class: "kw-toolbar" },
      settingsButton,
      colourBy,
      h("span", { class: "kw-spacer" }),
      h(
        "button",
        {
          class: "kw-btn kw-export-md",
          title: "Download as Markdown",
          onclick: () => this.exportAs("md"),
        },
        "Export .md",
      ),
      h(
        "button",
        {
          class: "kw-btn kw-export-json",
          title: "Download as JSON",
          onclick: () => this.exportAs("json"),
        },
        "Export .json",
      ),
      h(
        "button",
        {
          class: "kw-btn kw-clear",
          title: "Start a new conversation",
          onclick: () => this.clear(),
        },
        "Clear",
      ),
    );

    this.el = h(
      "div",
      { class: "kw-chat", tabindex: -1 },
      toolbar,
      this.statusLine.el,
      this.settings.el,
      this.transcript.el,
      this.toastEl,
      this.composer.el,
    );
    // Esc stops from anywhere in the panel, not only from the input box.
    this.el.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.busy()) {
        event.preventDefault();
        this.stop();
      }
    });

    const onMessage = (message: unknown) => this.onMessage(message);
    model.on("msg:custom", onMessage);
    this.disposers.push(() => model.off("msg:custom", onMessage));
    for (const name of ["transcript", "status", "model_info"]) {
      model.on(`change:${name}`, this.redraw);
      this.disposers.push(() => model.off(`change:${name}`, this.redraw));
    }
    this.draw();
    // A view that opens while a reply streams has missed its first batches.
    if (this.status().state === "generating") this.send(request(REQUEST.sync, {}));
    // Put the view at the end of the conversation once it is laid out.
    requestAnimationFrame(() => this.transcript.scrollToBottom());
  }

  private status(): Status {
    return { ...DEFAULT_STATUS, ...(this.model.get("status") ?? {}) };
  }

  private entries(): TranscriptEntry[] {
    return this.model.get("transcript") ?? [];
  }

  private busy(): boolean {
    return this.status().state === "generating";
  }

  private send(message: Request): boolean {
    this.ownRequests.add(message.id);
    this.model.send(message);
    return true;
  }

  /** Continues reply `entry` from its token `index` with `tokenId` or `text` (null: the model
   * picks): a new branch streams in its place. */
  private branch(
    entry: TranscriptEntry,
    index: number,
    tokenId: number | null,
    text: string | null,
  ): void {
    this.send(
      request(REQUEST.branch, {
        message_id: entry.id,
        token_index: index,
        token_id: tokenId,
        text,
      }),
    );
  }

  private tokensOf(id: string): readonly TokenRecord[] | undefined {
    return id === this.assembler.replyId && this.assembler.count > 0
      ? this.assembler.tokens
      : this.replyTokens.get(id);
  }

  private stop(): void {
    this.send(request(REQUEST.cancel, {}));
  }

  private clear(): void {
    if (this.entries().length === 0) return;
    this.assembler.clear();
    this.send(request(REQUEST.clear, {}));
  }

  private onMessage(raw: unknown): void {
    const message = parseResponse(raw);
    if (message === null) return;
    switch (message.kind) {
      case "chat.token": {
        // Batches of a new reply can arrive before the transcript change that announces it is
        // drawn (draws wait for the next frame); the batch itself says which reply it belongs to.
        if (message.reply_id !== this.assembler.replyId) this.assembler.begin(message.reply_id);
        const result = this.assembler.apply(message);
        if (result === "gap") this.send(request(REQUEST.sync, {}));
        if (result !== "duplicate") this.redraw();
        break;
      }
      case "chat.snapshot":
        if (this.assembler.applySnapshot(message)) this.redraw();
        break;
      case "chat.done":
        if (this.assembler.replyId === message.reply_id && this.assembler.count > 0) {
          this.replyTokens.set(message.reply_id, [...this.assembler.tokens]);
        }
        this.redraw();
        break;
      case "chat.error":
        this.onError(message);
        break;
      case "chat.tree":
        this.onTree(message);
        break;
      case "chat.tokens":
        this.replyTokens.set(message.reply_id, message.tokens);
        this.redraw();
        break;
    }
  }

  /** Colours the replies token by token (null: Markdown). The engine records each token's top
   * alternatives only when asked, so turning this on asks for them (as the Probabilities tab does). */
  private colourBy(colouring: TokenColouring | null): void {
    this.transcript.setColouring(colouring, (id) => this.tokensOf(id));
    if (colouring && Number(this.model.get("top_k_alternatives") ?? 0) < COLOURING_ALTERNATIVES) {
      this.model.set("top_k_alternatives", COLOURING_ALTERNATIVES);
      this.model.save_changes();
    }
    this.draw();
  }

  private onError(message: ErrorMessage): void {
    // Generation errors are in the transcript for every view; request errors only for the sender.
    if (message.code === "generation") return;
    if (!this.ownRequests.has(message.id)) return;
    this.toast(message.message);
  }

  private toast(text: string): void {
    this.toastEl.textContent = text;
    this.toastEl.hidden = false;
    if (this.toastTimer !== null) clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => {
      this.toastEl.hidden = true;
    }, 4000);
  }

  private draw(): void {
    const status = this.status();
    const info: ModelInfo = this.model.get("model_info") ?? {};
    const entries = this.entries();
    const streaming = new Map<string, string>();
    const live = entries.find((entry) => entry.status === "streaming");
    if (live) {
      if (this.assembler.replyId !== live.id) this.assembler.begin(live.id);
      streaming.set(live.id, this.assembler.text);
    }
    const generating = status.state === "generating";
    this.transcript.update(entries, generating, streaming);
    this.statusLine.update(
      status,
      info,
      live ? { rate: this.assembler.liveRate(), streamed: this.assembler.count } : null,
    );
    if (status.state === "loading") {
      this.composer.setMode("ready", "The model is loading; messages sent now wait for it");
    } else if (status.state === "error" && !info.name) {
      this.composer.setMode("disabled", "The model could not be loaded");
    } else {
      this.composer.setMode(
        generating ? "generating" : "ready",
        "Message the model (Enter to send, Shift+Enter for a new line)",
      );
    }
    this.tickWhileLoading(status.state === "loading");
  }

  private tickWhileLoading(loading: boolean): void {
    if (loading && this.loadingTimer === null) {
      this.loadingTimer = setInterval(() => this.redraw(), 1000);
    } else if (!loading && this.loadingTimer !== null) {
      clearInterval(this.loadingTimer);
      this.loadingTimer = null;
    }
  }

  private exportAs(format: "md" | "json"): void {
    const context: ExportContext = {
      transcript: this.entries(),
      modelInfo: this.model.get("model_info") ?? {},
      systemPrompt: this.model.get("system_prompt") ?? "",
      settings: {
        temperature: this.model.get("temperature"),
        top_p: this.model.get("top_p"),
        top_k: this.model.get("top_k"),
        min_p: this.model.get("min_p"),
        repetition_penalty: this.model.get("repetition_penalty"),
        max_new_tokens: this.model.get("max_new_tokens"),
        seed: this.model.get("seed"),
      },
    };
    if (format === "json") {
      // The whole tree (every branch) is the kernel's: the file is written once it answers.
      const ask = request(REQUEST.exportTree, {});
      this.exports.set(ask.id, context);
      this.send(ask);
      return;
    }
    download(
      exportFilename(context.modelInfo, "md"),
      transcriptToMarkdown(context),
      "text/markdown",
    );
  }

  private onTree(message: TreeMessage): void {
    const context = this.exports.get(message.id);
    if (!context) return;
    this.exports.delete(message.id);
    const tree = message.document === null ? undefined : JSON.parse(message.document);
    const text = transcriptToJson({ ...context, tree });
    download(exportFilename(context.modelInfo, "json"), text, "application/json");
  }

  dispose(): void {
    for (const dispose of this.disposers) dispose();
    this.settings.dispose();
    this.tickWhileLoading(false);
    if (this.toastTimer !== null) clearTimeout(this.toastTimer);
    this.el.remove();
  }
}
