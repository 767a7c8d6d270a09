// Assembles the reply being generated from `chat.token` batches and `chat.snapshot` catch-ups.
//
// Batches carry each token's index, so the assembler is idempotent: a view that asked for a snapshot
// while batches were in flight may see the same token twice, and keeps it once. A batch that starts
// past what the assembler holds means this view missed messages (it was opened mid-reply); the
// caller then asks the kernel for a snapshot.

import type { SnapshotMessage, TokenBatch, TokenRecord } from "./protocol";

export type ApplyResult = "applied" | "duplicate" | "gap" | "other_reply";

export class StreamAssembler {
  replyId: string | null = null;
  text = "";
  tokens: TokenRecord[] = [];
  /** performance.now() when the first token of this reply arrived here, for the live tok/s. */
  firstTokenAt: number | null = null;
  lastTokenAt: number | null = null;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** Starts a new reply; tokens of any other reply are ignored from now on. */
  begin(replyId: string): void {
    if (this.replyId === replyId) return;
    this.replyId = replyId;
    this.text = "";
    this.tokens = [];
    this.firstTokenAt = null;
    this.lastTokenAt = null;
  }

  get count(): number {
    return this.tokens.length;
  }

  apply(batch: TokenBatch): ApplyResult {
    if (this.replyId === null) this.begin(batch.reply_id);
    if (batch.reply_id !== this.replyId) return "other_reply";
    let applied = false;
    let gap = false;
    for (const token of batch.tokens) {
      if (token.index < this.tokens.length) continue;
      if (token.index > this.tokens.length) {
        gap = true;
        break;
      }
      this.tokens.push(token);
      this.text += token.text;
      applied = true;
    }
    if (applied) this.markArrival();
    if (gap) return "gap";
    return applied ? "applied" : "duplicate";
  }

  private markArrival(): void {
    const t = this.now();
    if (this.firstTokenAt === null) this.firstTokenAt = t;
    this.lastTokenAt = t;
  }

  /** Takes the kernel's whole reply so far when it is ahead of what this view holds. */
  applySnapshot(snapshot: SnapshotMessage): boolean {
    if (snapshot.reply_id === null) return false;
    if (snapshot.reply_id !== this.replyId) this.begin(snapshot.reply_id);
    if (snapshot.count <= this.tokens.length) return false;
    this.tokens = snapshot.tokens.slice(0, snapshot.count);
    this.text = snapshot.text;
    this.markArrival();
    return true;
  }

  /** Tokens per second as drawn in this view, or null before two tokens have arrived. */
  liveRate(): number | null {
    if (this.firstTokenAt === null || this.lastTokenAt === null || this.tokens.length < 2) {
      return null;
    }
    const seconds = (this.lastTokenAt - this.firstTokenAt) / 1000;
    return seconds > 0 ? (this.tokens.length - 1) / seconds : null;
  }

  clear(): void {
    this.replyId = null;
    this.text = "";
    this.tokens = [];
    this.firstTokenAt = null;
    this.lastTokenAt = null;
  }
}
