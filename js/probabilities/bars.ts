// A bar chart of next-token alternatives: one row per token, its bar as long as its probability.
// Rows are buttons when the caller can act on them (the step mode picks the clicked token).

import { h } from "../shared/dom";

export interface Bar {
  tokenId: number;
  piece: string;
  prob: number;
  /** "chosen": the token that was used; "proposal": the sampler's pick in the step mode. */
  mark?: "chosen" | "proposal" | undefined;
}

export function percent(prob: number): string {
  if (!Number.isFinite(prob)) return "–";
  if (prob >= 0.995) return "100%";
  if (prob >= 0.1) return `${(prob * 100).toFixed(0)}%`;
  if (prob >= 0.001) return `${(prob * 100).toFixed(1)}%`;
  return `${(prob * 100).toExponential(0)}%`;
}

export function renderBars(bars: Bar[], pick?: (tokenId: number) => void): HTMLElement {
  const top = Math.max(1e-9, ...bars.map((bar) => bar.prob));
  return h(
    "div",
    { class: "kw-bars", role: "list" },
    ...bars.map((bar) => {
      const row = h(
        pick ? "button" : "div",
        {
          class: `kw-bar-row${bar.mark ? ` kw-bar-${bar.mark}` : ""}`,
          role: "listitem",
          "data-id": bar.tokenId,
          title: `id ${bar.tokenId}: ${percent(bar.prob)}`,
        },
        h("span", { class: "kw-bar-piece" }, bar.piece),
        h(
          "span",
          { class: "kw-bar-track" },
          h("span", {
            class: "kw-bar-fill",
            style: `width: ${((bar.prob / top) * 100).toFixed(1)}%`,
          }),
        ),
        h("span", { class: "kw-bar-value" }, percent(bar.prob)),
      );
      if (pick) row.addEventListener("click", () => pick(bar.tokenId));
      return row;
    }),
  );
}
