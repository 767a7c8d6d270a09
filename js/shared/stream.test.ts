import { describe, expect, it } from "vitest";
import type { SnapshotMessage, TokenBatch, TokenRecord } from "./protocol";
import { StreamAssembler } from "./stream";

function token(index: number, text: string): TokenRecord {
  return { index, token_id: 100 + index, text, logprob: -0.5, top_k: [] };
}

function batch(replyId: string, tokens: TokenRecord[]): TokenBatch {
  return { kind: "chat.token", id: "r1", reply_id: replyId, tokens };
}

function snapshot(replyId: string, texts: string[]): SnapshotMessage {
  const tokens = texts.map((text, i) => token(i, text));
  return {
    kind: "chat.snapshot",
    id: "s1",
    reply_id: replyId,
    text: texts.join(""),
    count: tokens.length,
    tokens,
  };
}

describe("StreamAssembler", () => {
  it("appends batches in order", () => {
    const a = new StreamAssembler(() => 0);
    expect(a.apply(batch("a", [token(0, "Hel"), token(1, "lo")]))).toBe("applied");
    expect(a.apply(batch("a", [token(2, ","), token(3, " world")]))).toBe("applied");
    expect(a.text).toBe("Hello, world");
    expect(a.count).toBe(4);
  });

  it("keeps tokens once when a batch repeats what it has", () => {
    const a = new StreamAssembler(() => 0);
    a.apply(batch("a", [token(0, "A"), token(1, "B")]));
    expect(a.apply(batch("a", [token(0, "A"), token(1, "B")]))).toBe("duplicate");
    expect(a.apply(batch("a", [token(1, "B"), token(2, "C")]))).toBe("applied");
    expect(a.text).toBe("ABC");
  });

  it("reports a gap instead of guessing, and applies what came before it", () => {
    const a = new StreamAssembler(() => 0);
    a.apply(batch("a", [token(0, "A")]));
    expect(a.apply(batch("a", [token(1, "B"), token(3, "D")]))).toBe("gap");
    expect(a.text).toBe("AB");
  });

  it("catches up from a snapshot, then continues with later batches", () => {
    const a = new StreamAssembler(() => 0);
    // A view opened mid-reply: its first batch starts at index 5.
    expect(a.apply(batch("a", [token(5, "F")]))).toBe("gap");
    expect(a.applySnapshot(snapshot("a", ["A", "B", "C", "D", "E", "F"]))).toBe(true);
    expect(a.apply(batch("a", [token(5, "F"), token(6, "G")]))).toBe("applied");
    expect(a.text).toBe("ABCDEFG");
  });

  it("ignores a snapshot older than what it holds", () => {
    const a = new StreamAssembler(() => 0);
    a.apply(batch("a", [token(0, "A"), token(1, "B"), token(2, "C")]));
    expect(a.applySnapshot(snapshot("a", ["A"]))).toBe(false);
    expect(a.text).toBe("ABC");
  });

  it("ignores batches of another reply", () => {
    const a = new StreamAssembler(() => 0);
    a.begin("b");
    expect(a.apply(batch("a", [token(0, "X")]))).toBe("other_reply");
    expect(a.text).toBe("");
  });

  it("measures the drawn rate from first to last arrival", () => {
    let now = 1000;
    const a = new StreamAssembler(() => now);
    a.apply(batch("a", [token(0, "A")]));
    expect(a.liveRate()).toBeNull();
    now = 2000;
    a.apply(batch("a", [token(1, "B"), token(2, "C"), token(3, "D"), token(4, "E")]));
    expect(a.liveRate()).toBeCloseTo(4);
  });

  it("keeps multi-byte text that arrives split across empty and later deltas", () => {
    const a = new StreamAssembler(() => 0);
    a.apply(batch("a", [token(0, ""), token(1, "")]));
    a.apply(batch("a", [token(2, "😀"), token(3, " ok")]));
    expect(a.text).toBe("😀 ok");
  });
});
