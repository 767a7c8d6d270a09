// An in-memory stand-in for the front end's widget model (Backbone model behind anywidget), for unit
// tests of views: it records what a view sends and lets a test play the kernel's messages.

import type { AnyModel } from "@anywidget/types";
import type { ChatModel, Status } from "./protocol";

type Callback = (...args: unknown[]) => void;

export class FakeModel<T extends Record<string, unknown>> {
  sent: unknown[] = [];
  saves = 0;
  private listeners = new Map<string, Set<Callback>>();

  constructor(private state: T) {}

  get<K extends keyof T>(key: K): T[K] {
    return this.state[key];
  }

  set<K extends keyof T>(key: K, value: T[K]): void {
    this.state = { ...this.state, [key]: value };
    this.emit(`change:${String(key)}`);
  }

  save_changes(): void {
    this.saves += 1;
  }

  send(content: unknown): void {
    this.sent.push(content);
  }

  on(name: string, callback: Callback): void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(callback);
  }

  off(name?: string | null, callback?: Callback | null): void {
    if (!name) {
      this.listeners.clear();
      return;
    }
    if (!callback) this.listeners.delete(name);
    else this.listeners.get(name)?.delete(callback);
  }

  /** What the kernel does: a traitlet changes, or a custom message arrives. */
  kernelSets<K extends keyof T>(key: K, value: T[K]): void {
    this.set(key, value);
  }

  kernelSends(message: unknown, buffers: readonly unknown[] = []): void {
    this.emit("msg:custom", message, buffers);
  }

  listenerCount(): number {
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  private emit(name: string, ...args: unknown[]): void {
    for (const callback of [...(this.listeners.get(name) ?? [])]) callback(...args);
  }

  get widget_manager(): AnyModel["widget_manager"] {
    return { get_model: () => Promise.reject(new Error("no widget manager in tests")) };
  }

  asModel(): AnyModel<T> {
    return this as unknown as AnyModel<T>;
  }
}

/** Resolves after the next animation frame, when views redraw. */
export function nextFrame(): Promise<void> {
  return new Promise((resolve) => requestAnimationFrame(() => resolve()));
}

/** A chat that is ready, as the kernel reports it. */
export const READY: Status = {
  state: "ready",
  message: "",
  tokens_used: 0,
  context_length: 8192,
  queued: 0,
  time_to_first_token_s: null,
  decode_tokens_per_s: null,
  loading_since: null,
};

/** The traitlets of a ChatWidget with a tiny model loaded and nothing said yet. */
export function chatState(): ChatModel {
  return {
    transcript: [],
    status: READY,
    model_info: {
      name: "tiny",
      dtype: "float32",
      backend: "jax",
      device: "cpu",
      context_length: 8192,
    },
    system_prompt: "",
    temperature: 0.7,
    top_p: 0.9,
    top_k: 50,
    min_p: 0,
    repetition_penalty: 1,
    max_new_tokens: 256,
    seed: null,
  };
}
