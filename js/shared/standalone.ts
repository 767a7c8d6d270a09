// What the standalone inspector widgets' front ends share: the root element, the traitlet
// listeners taken off again when the view goes, and the text box bound to a `text` traitlet.

import type { AnyModel } from "@anywidget/types";
import { debounce, h } from "./dom";
import { InspectClient } from "./inspect_client";

interface TextModel {
  text: string;
  [key: string]: unknown;
}

export interface Standalone {
  client: InspectClient;
  /** Runs `listener` on each of the traitlet `names` changing, until the view goes. */
  on(names: string[], listener: () => void): void;
  /** Shows `children` in the widget's root; returns the cleanup anywidget's `render` returns. */
  mount(children: HTMLElement[], dispose?: () => void): () => void;
}

export function standalone(model: AnyModel, el: HTMLElement): Standalone {
  const client = new InspectClient(model);
  const listeners: [string, () => void][] = [];
  return {
    client,
    on(names, listener) {
      for (const name of names) {
        model.on(`change:${name}`, listener);
        listeners.push([`change:${name}`, listener]);
      }
    },
    mount(children, dispose) {
      el.classList.add("kerasllm-widget");
      const root = h("div", { class: "kw-root kw-inspector-root" }, ...children);
      el.append(root);
      return () => {
        for (const [event, listener] of listeners) model.off(event, listener);
        dispose?.();
        client.dispose();
        root.remove();
      };
    },
  };
}

export interface TextBox {
  input: HTMLTextAreaElement;
  /** Shows the traitlet's text unless the box already holds it; true if it changed. */
  sync(): boolean;
  cancel(): void;
}

/**
 * A text box over the `text` traitlet: typing writes it (debounced) and calls `typed`. Hidden
 * when the view follows a chat instead of a text.
 */
export function textBox(
  model: AnyModel<TextModel>,
  label: string,
  hidden: boolean,
  typed: () => void,
): TextBox {
  const input = h("textarea", {
    class: "kw-token-input",
    rows: 2,
    spellcheck: "false",
    "aria-label": label,
    hidden,
  });
  input.value = model.get("text") ?? "";
  const write = debounce(() => {
    model.set("text", input.value);
    model.save_changes();
    typed();
  }, 400);
  input.addEventListener("input", write);
  return {
    input,
    sync() {
      const text = model.get("text") ?? "";
      if (input.value === text) return false;
      input.value = text;
      return true;
    },
    cancel: () => write.cancel(),
  };
}

/**
 * Shows `box` above `view` and asks the view again (`ask`) whenever the text or the conversation
 * (`revision`) changes; returns the cleanup anywidget's `render` returns.
 */
export function mountTextView(
  shell: Standalone,
  box: TextBox,
  view: { el: HTMLElement; dispose(): void },
  ask: () => void,
): () => void {
  shell.on(["text", "revision"], () => {
    box.sync();
    ask();
  });
  return shell.mount([box.input, view.el], () => {
    box.cancel();
    view.dispose();
  });
}
