import { describe, expect, it } from "vitest";
import type { PreprocessTable } from "../shared/inspect_protocol";
import { renderPreprocessTable } from "./table";

// The seed's figures: "Hello" at sequence_length 6.
const TABLE: PreprocessTable = {
  sequence_length: 6,
  rows: [
    {
      text: "Hello",
      token_ids: [128000, 9906, 128009, 0, 0, 0],
      padding_mask: [true, true, true, false, false, false],
      labels: [9906, 128009, 0, 0, 0, 0],
      sample_weight: [1, 1, 0, 0, 0, 0],
      token_pieces: ["<|begin_of_text|>", "Hello", "<|eot_id|>", "!", "!", "!"],
      label_pieces: ["Hello", "<|eot_id|>", "!", "!", "!", "!"],
      token_kinds: ["start", "text", "end", "pad", "pad", "pad"],
      label_kinds: ["text", "end", "pad", "pad", "pad", "pad"],
      truncated: false,
    },
  ],
};

describe("preprocessor table", () => {
  it("prints the rows as the seed does, with start, end and padding marked", () => {
    const el = renderPreprocessTable(TABLE);
    const row = (name: string) => [...el.querySelectorAll(`tr[data-row="${name}"] td`)];
    expect(row("token_ids").map((c) => c.textContent)).toEqual([
      "128000",
      "9906",
      "128009",
      "0",
      "0",
      "0",
    ]);
    expect(row("padding_mask").map((c) => c.textContent)).toEqual([
      "True",
      "True",
      "True",
      "False",
      "False",
      "False",
    ]);
    expect(row("labels").map((c) => c.textContent)).toEqual(["9906", "128009", "0", "0", "0", "0"]);
    expect(row("sample_weight").map((c) => c.textContent)).toEqual(["1", "1", "0", "0", "0", "0"]);
    expect(row("token_ids")[0]?.classList.contains("kw-cell-start")).toBe(true);
    expect(row("token_ids")[2]?.classList.contains("kw-cell-end")).toBe(true);
    expect(row("token_ids")[3]?.classList.contains("kw-cell-pad")).toBe(true);
    expect(row("labels")[1]?.classList.contains("kw-cell-end")).toBe(true);
    expect(el.querySelector(".kw-badge-warn")).toBeNull();
  });

  it("flags a text that was cut", () => {
    const cut = { ...TABLE, rows: TABLE.rows.map((row) => ({ ...row, truncated: true })) };
    expect(renderPreprocessTable(cut).querySelector(".kw-badge-warn")?.textContent).toBe(
      "cut to fit",
    );
  });
});
