import { describe, expect, it } from "vitest";
import { ENVELOPE_KEYS, envelope, KIND_PATTERN, newId, parseEnvelope } from "./envelope";
import { REQUEST as INSPECT_REQUEST, RESPONSE as INSPECT_RESPONSE } from "./inspect_protocol";
import { REQUEST as CHAT_REQUEST, RESPONSE as CHAT_RESPONSE } from "./protocol";

const kinds = new Set(["chat.token", "tokens.result"]);

describe("envelope", () => {
  it("writes the envelope keys first, then the fields", () => {
    const message = envelope("chat.send", "v1-1", { text: "hi" });
    expect(Object.keys(message)).toEqual([...ENVELOPE_KEYS, "text"]);
    expect(message).toEqual({ kind: "chat.send", id: "v1-1", text: "hi" });
  });

  it("makes ids unique across calls and prefixes, in the kernel's shape", () => {
    const ids = Array.from({ length: 50 }, (_, i) => newId(i % 2 ? "v" : "i"));
    expect(new Set(ids).size).toBe(50);
    for (const id of ids) expect(id).toMatch(/^[vi][0-9a-z]+-[0-9]+$/);
  });

  it("accepts envelopes of the given kinds, with an empty id for broadcasts", () => {
    expect(parseEnvelope({ kind: "chat.token", id: "k1", tokens: [] }, kinds)?.kind).toBe(
      "chat.token",
    );
    expect(parseEnvelope({ kind: "tokens.result", id: "" }, kinds)?.id).toBe("");
  });

  it("rejects what is not an envelope of those kinds", () => {
    expect(parseEnvelope(null, kinds)).toBeNull();
    expect(parseEnvelope([], kinds)).toBeNull();
    expect(parseEnvelope("chat.token", kinds)).toBeNull();
    expect(parseEnvelope({ kind: "chat.token" }, kinds)).toBeNull();
    expect(parseEnvelope({ kind: "chat.token", id: 3 }, kinds)).toBeNull();
    expect(parseEnvelope({ kind: "chat.done", id: "a" }, kinds)).toBeNull();
  });

  it("names every kind of both protocols namespace.name, in disjoint namespaces", () => {
    const namespace = (kind: string) => kind.split(".")[0];
    const chat = [...Object.values(CHAT_REQUEST), ...Object.values(CHAT_RESPONSE)];
    const inspect = [...Object.values(INSPECT_REQUEST), ...Object.values(INSPECT_RESPONSE)];
    for (const kind of [...chat, ...inspect]) expect(kind).toMatch(KIND_PATTERN);
    const chatSpaces = new Set(chat.map(namespace));
    expect(inspect.filter((kind) => chatSpaces.has(namespace(kind)))).toEqual([]);
  });
});
