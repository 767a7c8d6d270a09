// The settings drawer: system prompt and sampling settings, each bound to the traitlet of the same
// name. Edits are debounced and validated before they reach the kernel; a value set from Python shows
// here at once unless the user is typing in that field.

import type { AnyModel } from "@anywidget/types";
import { debounce, h } from "../shared/dom";
import type { ChatModel } from "../shared/protocol";

interface NumberField {
  name:
    | "temperature"
    | "top_p"
    | "top_k"
    | "min_p"
    | "repetition_penalty"
    | "max_new_tokens"
    | "seed";
  label: string;
  hint: string;
  min: number;
  max: number;
  step: number;
  integer: boolean;
  nullable?: boolean;
}

export const NUMBER_FIELDS: NumberField[] = [
  {
    name: "temperature",
    label: "Temperature",
    hint: "0 picks the likeliest token",
    min: 0,
    max: 5,
    step: 0.05,
    integer: false,
  },
  {
    name: "top_p",
    label: "Top-p",
    hint: "nucleus: keep tokens up to this mass",
    min: 0.01,
    max: 1,
    step: 0.01,
    integer: false,
  },
  { name: "top_k", label: "Top-k", hint: "0 keeps all", min: 0, max: 1e6, step: 1, integer: true },
  {
    name: "min_p",
    label: "Min-p",
    hint: "drop tokens below this × the top",
    min: 0,
    max: 1,
    step: 0.01,
    integer: false,
  },
  {
    name: "repetition_penalty",
    label: "Repetition penalty",
    hint: "1 is off",
    min: 0.5,
    max: 3,
    step: 0.05,
    integer: false,
  },
  {
    name: "max_new_tokens",
    label: "Max new tokens",
    hint: "length limit of a reply",
    min: 1,
    max: 1e6,
    step: 1,
    integer: true,
  },
  {
    name: "seed",
    label: "Seed",
    hint: "empty: a new seed each reply",
    min: 0,
    max: 2 ** 31 - 1,
    step: 1,
    integer: true,
    nullable: true,
  },
];

/** Parses what the user typed; returns undefined when it is not a valid value for the field. */
export function parseField(field: NumberField, raw: string): number | null | undefined {
  const text = raw.trim();
  if (text === "") return field.nullable ? null : undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) return undefined;
  if (field.integer && !Number.isInteger(value)) return undefined;
  if (value < field.min || value > field.max) return undefined;
  return value;
}

export class SettingsDrawer {
  readonly el: HTMLElement;
  private readonly disposers: Array<() => void> = [];

  constructor(private readonly model: AnyModel<ChatModel>) {
    const form = h("form", {
      class: "kw-settings-grid",
      onsubmit: (e: Event) => e.preventDefault(),
    });
    form.append(this.systemPromptField());
    for (const field of NUMBER_FIELDS) form.append(this.numberField(field));
    this.el = h(
      "div",
      { class: "kw-drawer", hidden: true, "aria-label": "Settings" },
      h("div", { class: "kw-drawer-title" }, "Settings"),
      form,
    );
  }

  get open(): boolean {
    return !this.el.hidden;
  }

  toggle(force?: boolean): void {
    this.el.hidden = force === undefined ? !this.el.hidden : !force;
  }

  private commit(name: keyof ChatModel, value: unknown): void {
    if (this.model.get(name) === value) return;
    this.model.set(name, value as ChatModel[typeof name]);
    this.model.save_changes();
  }

  private systemPromptField(): HTMLElement {
    const area = h("textarea", {
      class: "kw-setting kw-system-prompt",
      name: "system_prompt",
      rows: 3,
      placeholder: "The model's instructions (empty: the model's default)",
    });
    area.value = this.model.get("system_prompt") ?? "";
    const save = debounce(() => this.commit("system_prompt", area.value), 400);
    area.addEventListener("input", () => save());
    area.addEventListener("change", () => save.flush());
    area.addEventListener("blur", () => save.flush());
    this.listen("system_prompt", () => {
      if (document.activeElement !== area) area.value = this.model.get("system_prompt") ?? "";
    });
    this.disposers.push(() => save.flush());
    return h(
      "label",
      { class: "kw-field kw-field-wide" },
      h("span", { class: "kw-label" }, "System prompt"),
      area,
    );
  }

  private numberField(field: NumberField): HTMLElement {
    const input = h("input", {
      class: "kw-setting",
      type: "number",
      name: field.name,
      min: field.min,
      max: field.max,
      step: field.step,
      placeholder: field.nullable ? "random" : "",
    });
    const show = () => {
      const value = this.model.get(field.name);
      input.value = value === null || value === undefined ? "" : String(value);
      input.classList.remove("kw-invalid");
    };
    show();
    const apply = (final: boolean) => {
      const value = parseField(field, input.value);
      const valid = value !== undefined;
      input.classList.toggle("kw-invalid", !valid);
      input.title = valid ? "" : `${field.label}: ${field.min} to ${field.max}`;
      if (valid) this.commit(field.name, value);
      else if (final) show();
    };
    const save = debounce(() => apply(false), 400);
    input.addEventListener("input", () => save());
    input.addEventListener("change", () => {
      save.cancel();
      apply(true);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        save.cancel();
        apply(true);
      }
    });
    this.listen(field.name, () => {
      if (document.activeElement !== input) show();
    });
    return h(
      "label",
      { class: "kw-field", title: field.hint },
      h("span", { class: "kw-label" }, field.label),
      input,
      h("span", { class: "kw-hint" }, field.hint),
    );
  }

  private listen(name: string, callback: () => void): void {
    this.model.on(`change:${name}`, callback);
    this.disposers.push(() => this.model.off(`change:${name}`, callback));
  }

  dispose(): void {
    for (const dispose of this.disposers) dispose();
  }
}
