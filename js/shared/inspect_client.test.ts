import { describe, expect, it } from "vitest";
import { Channel } from "./fake_channel";
import { InspectClient, InspectError } from "./inspect_client";

describe("InspectClient", () => {
  it("routes answers to their requests by id", async () => {
    const channel = new Channel();
    const client = new InspectClient(channel.model);
    const first = client.request("tokens.request", { text: "a" });
    const second = client.request("tokens.request", { text: "b" });
    const [a, b] = channel.sent;
    expect(a?.kind).toBe("tokens.request");
    expect(a?.id).not.toBe(b?.id);
    const buffer = new DataView(new ArrayBuffer(4));
    channel.reply({ kind: "tokens.result", id: b?.id, text: "b", tables: [], labels: [] }, [
      buffer,
    ]);
    channel.reply({ kind: "tokens.result", id: a?.id, text: "a", tables: [], labels: [] });
    expect((await second).buffers).toEqual([buffer]);
    expect(((await first).message as { text: string }).text).toBe("a");
    expect(client.timings.has("tokens.request")).toBe(true);
  });

  it("rejects on inspect.error and ignores the chat's own messages", async () => {
    const channel = new Channel();
    const client = new InspectClient(channel.model);
    const pending = client.request("attention.request", { layer: 9 });
    channel.reply({ kind: "chat.token", id: channel.sent[0]?.id, tokens: [] }); // not ours: ignored
    channel.reply({
      kind: "inspect.error",
      id: channel.sent[0]?.id,
      code: "failed",
      message: "layer 9 is out of range",
    });
    await expect(pending).rejects.toThrow("layer 9");
    await expect(pending).rejects.toBeInstanceOf(InspectError);
  });

  it("delivers every answer of a stream until it ends", () => {
    const channel = new Channel();
    const client = new InspectClient(channel.model);
    const layers: number[] = [];
    const id = client.stream("attention.overview", { size: 8 }, ({ message }) =>
      layers.push((message as { layer: number }).layer),
    );
    channel.reply({ kind: "attention.thumbnails", id, layer: 0 });
    channel.reply({ kind: "attention.thumbnails", id, layer: 1 });
    client.endStream(id);
    channel.reply({ kind: "attention.thumbnails", id, layer: 2 });
    expect(layers).toEqual([0, 1]);
  });

  it("hands messages that answer no request to the listeners of their kind", () => {
    const channel = new Channel();
    const client = new InspectClient(channel.model);
    const pending = client.request("attention.request", { layer: 3 });
    const ready: number[] = [];
    const stop = client.listen("attention.progress", ({ message }) =>
      ready.push((message as { ready_layers: number }).ready_layers),
    );
    channel.reply({ kind: "attention.progress", id: "", ready_layers: 2, num_layers: 4 });
    channel.reply({ kind: "attention.progress", id: "", ready_layers: 3, num_layers: 4 });
    stop();
    channel.reply({ kind: "attention.progress", id: "", ready_layers: 4, num_layers: 4 });
    expect(ready).toEqual([2, 3]);
    let settled = false;
    pending.then(() => {
      settled = true;
    });
    return Promise.resolve().then(() => expect(settled).toBe(false)); // still waiting for its map
  });

  it("rejects what is pending when the view closes", async () => {
    const channel = new Channel();
    const client = new InspectClient(channel.model);
    const pending = client.request("probabilities.request");
    client.dispose();
    await expect(pending).rejects.toThrow("view closed");
  });
});
