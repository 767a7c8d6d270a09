import { describe, expect, it } from "vitest";
import { newRequestId, parseResponse, REQUEST, RESPONSE, request } from "./protocol";

describe("protocol", () => {
  it("namespaces every kind under chat.", () => {
    for (const kind of [...Object.values(REQUEST), ...Object.values(RESPONSE)]) {
      expect(kind).toMatch(/^chat\.[a-z_]+$/);
    }
  });

  it("builds requests with a fresh id and the given fields", () => {
    const a = request(REQUEST.send, { text: "hi" });
    const b = request(REQUEST.send, { text: "hi" });
    expect(a).toMatchObject({ kind: "chat.send", text: "hi" });
    expect(a.id).not.toBe(b.id);
    expect(new Set(Array.from({ length: 100 }, newRequestId)).size).toBe(100);
  });

  it("accepts well-formed responses", () => {
    const token = {
      kind: "chat.token",
      id: "k1",
      reply_id: "m2",
      tokens: [{ index: 0, token_id: 9906, text: "Hello", logprob: -0.1, top_k: [] }],
    };
    expect(parseResponse(token)).toEqual(token);
    const error = {
      kind: "chat.error",
      id: "k1",
      reply_id: null,
      code: "bad_request",
      message: "x",
    };
    expect(parseResponse(error)?.kind).toBe("chat.error");
  });

  it("rejects messages that are not responses or are malformed", () => {
    expect(parseResponse(null)).toBeNull();
    expect(parseResponse("chat.token")).toBeNull();
    expect(parseResponse({ kind: "chat.send", id: "a", text: "x" })).toBeNull();
    expect(parseResponse({ kind: "attention.result", id: "a" })).toBeNull();
    expect(parseResponse({ kind: "chat.token", id: "a", reply_id: "m", tokens: "x" })).toBeNull();
    expect(
      parseResponse({ kind: "chat.token", id: "a", reply_id: "m", tokens: [{ index: "0" }] }),
    ).toBeNull();
    expect(parseResponse({ kind: "chat.done", reply_id: "m", text: "x" })).toBeNull();
  });
});
