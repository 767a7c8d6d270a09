// The ChatWidget's front end (the `_esm` of kerasllm_widget.widgets.chat_widget.ChatWidget): a tab
// strip over the views in TABS. Each tab is drawn when first shown and kept, so that switching tabs
// does not lose a half-typed message or the scroll position.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { h } from "../shared/dom";
import type { ChatModel } from "../shared/protocol";
import { TABS, type TabDefinition } from "./tabs";
import "../chat/chat.css";
import "./shell.css";
import "../shared/inspect.css";

function renderShell(model: AnyModel<ChatModel>, el: HTMLElement, tabs: TabDefinition[]) {
  const panels = new Map<string, { el: HTMLElement; cleanup: (() => void) | null }>();
  const strip = h("div", { class: "kw-tabs", role: "tablist", hidden: tabs.length < 2 });
  const body = h("div", { class: "kw-tab-body" });
  const root = h("div", { class: "kw-root" }, strip, body);
  const buttons = new Map<string, HTMLButtonElement>();

  const show = (id: string) => {
    for (const tab of tabs) {
      const selected = tab.id === id;
      buttons.get(tab.id)?.setAttribute("aria-selected", String(selected));
      let panel = panels.get(tab.id);
      if (selected && !panel) {
        const panelEl = h("div", { class: "kw-tab-panel", role: "tabpanel", "data-tab": tab.id });
        body.append(panelEl);
        panel = { el: panelEl, cleanup: tab.render(model, panelEl) };
        panels.set(tab.id, panel);
      }
      if (panel) panel.el.hidden = !selected;
    }
  };
  for (const tab of tabs) {
    const button = h(
      "button",
      { class: "kw-tab", role: "tab", "data-tab": tab.id, onclick: () => show(tab.id) },
      tab.label,
    );
    buttons.set(tab.id, button);
    strip.append(button);
  }
  el.classList.add("kerasllm-widget");
  el.append(root);
  const first = tabs[0];
  if (first) show(first.id);
  return () => {
    for (const panel of panels.values()) panel.cleanup?.();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<ChatModel>) {
    return renderShell(model, el, TABS);
  },
};
