// For unit tests of the inspector views: a widget model whose kernel side the test plays. It
// records what the view sends and delivers replies (with binary buffers) as the comm would.

import type { MessageModel } from "./inspect_client";

type Handler = (message: unknown, buffers: DataView[]) => void;

export class Channel {
  sent: Array<Record<string, unknown>> = [];
  private handlers = new Set<Handler>();
  readonly model = {
    send: (content: unknown) => this.sent.push(content as Record<string, unknown>),
    on: (_name: string, handler: Handler) => this.handlers.add(handler),
    off: (_name?: string | null, handler?: Handler | null) => {
      if (handler) this.handlers.delete(handler);
    },
  } as unknown as MessageModel;

  reply(message: Record<string, unknown>, buffers: DataView[] = []): void {
    for (const handler of this.handlers) handler(message, buffers);
  }

  /** The last request of a kind. */
  last(kind: string): Record<string, unknown> | undefined {
    return [...this.sent].reverse().find((m) => m.kind === kind);
  }
}

/** Lets promise callbacks run (answers resolve on the microtask queue). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

export function bytes(array: ArrayBufferView): DataView {
  return new DataView(array.buffer, array.byteOffset, array.byteLength);
}
