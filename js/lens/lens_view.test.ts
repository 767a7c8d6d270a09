import { afterEach, describe, expect, it } from "vitest";
import { bytes, Channel, settle } from "../shared/fake_channel";
import { InspectClient } from "../shared/inspect_client";
import { REQUEST, RESPONSE } from "../shared/inspect_protocol";
import { decodeLens, settlesAt, trajectory } from "./lens_data";
import { LensView } from "./lens_view";
import { chartCaption, rankPosition, rankTicks } from "./rank_chart";

/** numpy's float16 bits of a few probabilities (np.array([...], np.float16).view(np.uint16)). */
const HALF: Record<number, number> = {
  0: 0,
  0.125: 12288,
  0.25: 13312,
  0.5: 14336,
  0.75: 14848,
  1: 15360,
};

function half(values: number[]): Uint16Array {
  return Uint16Array.from(values.map((v) => HALF[v] ?? 0));
}

// Three tokens "The cat sat" through 2 layers, top 2 at each cell. Ids: 1 The, 2 cat, 3 sat,
// 4 dog, 5 mat. Layer 0 guesses "dog" after "The", layer 1 gets "cat" right.
function lensMessage(id: unknown) {
  const arrays = {
    token_ids: Int32Array.from([1, 2, 3]),
    // [layer][position][k]
    top_ids: Int32Array.from([4, 2, 3, 5, 5, 3, 2, 4, 3, 5, 5, 4]),
    top_probs: half([0.5, 0.25, 0.5, 0.25, 0.5, 0.25, 0.75, 0.125, 0.5, 0.25, 1, 0]),
    entropy: half([1, 1, 1, 0.5, 0.5, 0.125]),
    target_ids: Int32Array.from([2, 3, 5]),
    target_rank: Int32Array.from([1, 0, 0, 0, 0, 0]),
    target_probs: half([0.25, 0.5, 0.5, 0.75, 0.5, 1]),
  };
  const names = Object.keys(arrays) as Array<keyof typeof arrays>;
  const headers = Object.fromEntries(
    names.map((name, buffer) => {
      const data = arrays[name];
      const shape = name.startsWith("top")
        ? [2, 3, 2]
        : name === "token_ids" || name === "target_ids"
          ? [3]
          : [2, 3];
      const dtype = data instanceof Int32Array ? "int32" : "float16";
      return [name, { dtype, shape, buffer }];
    }),
  );
  return {
    message: {
      kind: RESPONSE.lens,
      id,
      sequence_id: "s1",
      pieces: ["The", "␣cat", "␣sat"],
      roles: ["text", "text", "text"],
      num_layers: 2,
      top_k: 2,
      compute_s: 0.5,
      labels: { "1": "The", "2": "␣cat", "3": "␣sat", "4": "␣dog", "5": "␣mat" },
      arrays: headers,
    },
    buffers: names.map((name) => bytes(arrays[name])),
  };
}

afterEach(() => document.body.replaceChildren());

function mount() {
  const channel = new Channel();
  const view = new LensView({ client: new InspectClient(channel.model) });
  document.body.append(view.el);
  return { channel, view };
}

describe("lens data", () => {
  it("decodes float16 probabilities and follows the next token through the layers", () => {
    const { message, buffers } = lensMessage("x");
    const data = decodeLens(message as never, buffers);
    expect([data.layers, data.length, data.k]).toEqual([2, 3, 2]);
    expect(Array.from(data.topProbs.slice(0, 2))).toEqual([0.5, 0.25]);
    const path = trajectory(data, 0);
    expect(path).toMatchObject({ tokenId: 2, piece: "␣cat", predicted: false });
    expect(path.ranks).toEqual([1, 0]);
    expect(path.probs).toEqual([0.25, 0.75]);
    expect(settlesAt(path)).toBe(1);
    // The last position follows the model's own choice.
    expect(trajectory(data, 2)).toMatchObject({ tokenId: 5, predicted: true, ranks: [0, 0] });
    expect(settlesAt(trajectory(data, 2))).toBe(0);
  });

  it("puts ranks on a log axis with the top at 0", () => {
    expect(rankPosition(0)).toBe(0);
    expect(rankPosition(9)).toBe(1);
    expect(rankTicks(9)).toEqual([1, 10]);
    expect(rankTicks(25_000)).toEqual([1, 10, 100, 1000, 10_000]);
  });
});

describe("LensView", () => {
  it("shows that a pass is running, then draws the grid coloured by probability", async () => {
    const { channel, view } = mount();
    const request = channel.last(REQUEST.lens);
    expect(request).toMatchObject({ text: null });
    expect(view.el.dataset.state).toBe("loading");
    channel.reply({ kind: RESPONSE.lensProgress, id: "", length: 3, num_layers: 2 });
    expect(view.el.dataset.state).toBe("computing");
    expect(view.el.querySelector(".kw-lens-status")?.textContent).toMatch(
      /Computing the lens of 3 tokens through 2 layers/,
    );
    const { message, buffers } = lensMessage(request?.id);
    channel.reply(message, buffers);
    await settle();
    expect(view.el.dataset.state).toBe("ready");
    const headers = [...view.el.querySelectorAll<HTMLElement>(".kw-lens-col")];
    expect(headers.map((el) => el.textContent)).toEqual(["The", "␣cat", "␣sat"]);
    expect(view.el.querySelectorAll(".kw-lens-layer").length).toBe(2);
    const cells = [...view.el.querySelectorAll<HTMLElement>(".kw-lens-cell")];
    expect(cells.map((el) => el.textContent)).toEqual([
      "␣dog",
      "␣sat",
      "␣mat",
      "␣cat",
      "␣sat",
      "␣mat",
    ]);
    // Every cell has a title; hits (the token that came next) are marked, the last column never.
    expect(cells[3]?.title).toBe("layer 1, after “The”: “ cat” 75%");
    expect(cells.map((el) => el.classList.contains("kw-lens-hit"))).toEqual([
      false,
      true,
      false,
      true,
      true,
      false,
    ]);
    // Coloured by the top token's probability: a sure cell is not coloured like an unsure one.
    expect(cells[5]?.style.background).toMatch(/^rgb/);
    expect(cells[5]?.style.background).not.toBe(cells[0]?.style.background);
    // Entropy as the other colour mode.
    const before = cells[0]?.style.background;
    const select = view.el.querySelector<HTMLSelectElement>(".kw-lens-colour");
    if (select) select.value = "entropy";
    select?.dispatchEvent(new Event("change"));
    expect(cells[0]?.style.background).not.toBe(before);
    // The last position is charted first: the model's own choice.
    expect(view.el.dataset.selected).toBe("2");
    expect(view.el.querySelector(".kw-lens-caption")?.textContent).toMatch(/model's own choice/);
    view.dispose();
  });

  it("lists a hovered cell's top k and charts a clicked column, by mouse or keyboard", async () => {
    const { channel, view } = mount();
    const { message, buffers } = lensMessage(channel.last(REQUEST.lens)?.id);
    channel.reply(message, buffers);
    await settle();
    const cell = view.el.querySelector<HTMLElement>(
      '.kw-lens-cell[data-layer="0"][data-position="0"]',
    );
    cell?.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    const tip = view.el.querySelector<HTMLElement>(".kw-lens-tip");
    expect(tip?.hidden).toBe(false);
    const rows = [...(tip?.querySelectorAll(".kw-lens-tip-row") ?? [])].map((r) => r.textContent);
    expect(rows).toEqual(["␣dog50%", "␣cat25%"]);
    // The token that came next is marked among the alternatives.
    expect(tip?.querySelector(".kw-lens-tip-next")?.textContent).toBe("␣cat25%");

    const first = view.el.querySelector<HTMLElement>('.kw-lens-col[data-position="0"]');
    first?.click();
    expect(view.el.dataset.selected).toBe("0");
    const chart = view.el.querySelector("svg.kw-lens-chart");
    expect(chart?.getAttribute("data-position")).toBe("0");
    expect(chart?.querySelector(".kw-lens-rank-line")?.getAttribute("d")).toMatch(/^M.* L/);
    expect(chart?.querySelectorAll(".kw-lens-rank-dot").length).toBe(2);
    expect(view.el.querySelector(".kw-lens-caption")?.textContent).toMatch(
      /“ cat”, the token that came next: the top token from layer 1 on/,
    );
    expect(
      [...view.el.querySelectorAll(".kw-lens-cell.kw-lens-selected")].map(
        (el) => (el as HTMLElement).dataset.position,
      ),
    ).toEqual(["0", "0"]);
    // Keyboard: the selected column is the one tab stop; arrows move and chart.
    expect(first?.tabIndex).toBe(0);
    first?.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
    expect(view.el.dataset.selected).toBe("1");
    expect(document.activeElement?.getAttribute("data-position")).toBe("1");
    expect(first?.tabIndex).toBe(-1);
    view.dispose();
  });

  it("says why when there is nothing to look at, and asks again on refresh", async () => {
    const { channel, view } = mount();
    channel.reply({
      kind: "inspect.error",
      id: channel.last(REQUEST.lens)?.id,
      request_kind: REQUEST.lens,
      code: "not_ready",
      message: "there are no tokens to look at yet",
    });
    await settle();
    expect(view.el.dataset.state).toBe("error");
    expect(view.el.querySelector(".kw-inspect-error")?.textContent).toMatch(/no tokens/);
    view.refresh();
    expect(channel.sent.filter((m) => m.kind === REQUEST.lens).length).toBe(2);
    view.dispose();
  });
});

describe("chartCaption", () => {
  const path = (ranks: number[]) => ({
    position: 0,
    tokenId: 2,
    piece: "the",
    predicted: false,
    ranks,
    probs: ranks.map((rank) => (rank === 0 ? 0.5 : 0.1)),
  });

  it("names the layer from which the token stays on top", () => {
    expect(chartCaption(path([3, 0, 0]))).toContain("the top token from layer 1 on");
  });

  it("says when the token led at earlier layers but not at the last", () => {
    const caption = chartCaption(path([0, 0, 2]));
    expect(caption).toContain("the top token at 2 layers, not at the last");
    expect(caption).not.toContain("never");
  });

  it("says never only when no layer ranked it first", () => {
    expect(chartCaption(path([4, 2, 1]))).toContain(
      "never the top token (at the last layer rank 2",
    );
  });
});
