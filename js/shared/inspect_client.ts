// Request/response over a widget's custom messages for the inspector views: each request gets an
// id, its answers are routed back by that id, and `inspect.error` answers reject the promise.
// Works on any widget model whose kernel side answers the inspector protocol (a standalone
// inspector, or the ChatWidget hosting the inspector tabs).

import type { AnyModel } from "@anywidget/types";
import type { BufferLike } from "./codecs";
import { envelope } from "./envelope";
import { type InspectResponse, newInspectId, parseInspectResponse } from "./inspect_protocol";

/** What the client needs of a widget model: anywidget's `send`, `on` and `off`. */
export type MessageModel = Pick<AnyModel, "send" | "on" | "off">;

export interface Answer<T extends InspectResponse = InspectResponse> {
  message: T;
  buffers: BufferLike[];
}

export class InspectError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

type Listener = (answer: Answer) => void;

export class InspectClient {
  private readonly pending = new Map<string, { resolve: Listener; reject: (e: Error) => void }>();
  private readonly streams = new Map<string, Listener>();
  private readonly broadcasts = new Map<string, Set<Listener>>();
  private readonly handler: (message: unknown, buffers?: BufferLike[]) => void;
  /** Milliseconds each answered request took, by kind, for the views' status lines and the bench. */
  readonly timings = new Map<string, number>();

  constructor(private readonly model: MessageModel) {
    this.handler = (message, buffers) => this.receive(message, buffers ?? []);
    model.on("msg:custom", this.handler);
  }

  /** Sends a request; resolves with its first answer, rejects on its `inspect.error`. */
  request<T extends InspectResponse>(
    kind: string,
    fields: Record<string, unknown> = {},
  ): Promise<Answer<T>> {
    const id = newInspectId();
    const started = performance.now();
    return new Promise<Answer<T>>((resolve, reject) => {
      this.pending.set(id, {
        resolve: (answer) => {
          this.timings.set(kind, performance.now() - started);
          resolve(answer as Answer<T>);
        },
        reject,
      });
      this.model.send(envelope(kind, id, fields));
    });
  }

  /** Sends a message that gets no answer of its own (a stop). */
  notify(kind: string, fields: Record<string, unknown> = {}): void {
    this.model.send(envelope(kind, newInspectId(), fields));
  }

  /** Sends a request whose answers keep coming (the attention overview); returns its id. */
  stream(
    kind: string,
    fields: Record<string, unknown>,
    listener: Listener,
    onError?: (e: InspectError) => void,
  ): string {
    const id = newInspectId();
    this.streams.set(id, listener);
    if (onError) {
      this.pending.set(id, { resolve: () => {}, reject: (e) => onError(e as InspectError) });
    }
    this.model.send(envelope(kind, id, fields));
    return id;
  }

  /** Calls `listener` with every message of `kind` that answers no request (id ""), such as
   * the forward pass's progress; returns the function that stops it. */
  listen(kind: string, listener: Listener): () => void {
    let listeners = this.broadcasts.get(kind);
    if (!listeners) {
      listeners = new Set();
      this.broadcasts.set(kind, listeners);
    }
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Stops routing a stream's answers (the kernel stops it when a newer one starts). */
  endStream(id: string): void {
    this.streams.delete(id);
    this.pending.delete(id);
  }

  private receive(raw: unknown, buffers: BufferLike[]): void {
    const message = parseInspectResponse(raw);
    if (message === null) return;
    if (message.id === "") {
      for (const listener of this.broadcasts.get(message.kind) ?? [])
        listener({ message, buffers });
      return;
    }
    if (message.kind === "inspect.error") {
      const waiting = this.pending.get(message.id);
      if (waiting) {
        this.pending.delete(message.id);
        this.streams.delete(message.id);
        waiting.reject(new InspectError(message.code, message.message));
      }
      return;
    }
    const stream = this.streams.get(message.id);
    if (stream) {
      stream({ message, buffers });
      return;
    }
    const waiting = this.pending.get(message.id);
    if (waiting) {
      this.pending.delete(message.id);
      waiting.resolve({ message, buffers });
    }
  }

  dispose(): void {
    this.model.off("msg:custom", this.handler);
    for (const { reject } of this.pending.values())
      reject(new InspectError("superseded", "view closed"));
    this.pending.clear();
    this.streams.clear();
    this.broadcasts.clear();
  }
}
