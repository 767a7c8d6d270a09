// The ChatWidget's front end (the `_esm` of kerasllm_widget.widgets.chat_widget.ChatWidget): a tab
// strip over the views in TABS. Each tab is drawn when first shown and kept, so that switching tabs
// does not lose a half-typed message or the scroll position.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { h } from "../shared/dom";
import type { ChatModel } from "../shared/protocol";
import { deliverTabRequest, SHOW_TAB, type ShowTab } from "../shared/tab_requests";
import { TABS, type TabDefinition } from "./tabs";
import "../chat/chat.css";
import "./shell.css";
import "../shared/inspect.css";
import "../training/training.css";
import "../attribution/attribution.css";
import "../kv_cache/kv_cache.css";

function renderShell(model: AnyModel<ChatModel>, el: HTMLElement, tabs: TabDefinition[]) {
  const panels = new Map<string, { el: HTMLElement; cleanup: (() => void) | null }>();
  const strip = h("div", { class: "kw-tabs", role: "tablist" });
  const body = h("div", { class: "kw-tab-body" });
  const root = h("div", { class: "kw-root" }, strip, body);
  const buttons = new Map<string, HTMLButtonElement>();
  let selected: string | null = null;

  const offered = (tab: TabDefinition) => tab.available?.(model) ?? true;
  const show = (id: string) => {
    selected = id;
    for (const tab of tabs) {
      const isSelected = tab.id === id;
      buttons.get(tab.id)?.setAttribute("aria-selected", String(isSelected));
      let panel = panels.get(tab.id);
      if (isSelected && !panel) {
        const panelEl = h("div", { class: "kw-tab-panel", role: "tabpanel", "data-tab": tab.id });
        body.append(panelEl);
        panel = { el: panelEl, cleanup: tab.render(model, panelEl) };
        panels.set(tab.id, panel);
      }
      if (panel) panel.el.hidden = !isSelected;
    }
  };
  // Tabs that come and go (Training): the strip shows those on offer now.
  const refresh = () => {
    let visible = 0;
    for (const tab of tabs) {
      const on = offered(tab);
      const button = buttons.get(tab.id);
      if (button) button.hidden = !on;
      if (on) visible += 1;
    }
    strip.hidden = visible < 2;
    const current = tabs.find((tab) => tab.id === selected);
    if (!current || !offered(current)) {
      const first = tabs.find(offered);
      if (first) show(first.id);
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
  // A view asking for another tab (the Chat tab's "Attribute"): show it, then hand it the detail.
  root.addEventListener(SHOW_TAB, (event) => {
    const { tab, detail } = (event as CustomEvent<ShowTab>).detail;
    const wanted = tabs.find((candidate) => candidate.id === tab);
    if (!wanted || !offered(wanted)) return;
    show(tab);
    const panel = panels.get(tab);
    if (panel) deliverTabRequest(panel.el, detail);
  });
  const events = [...new Set(tabs.flatMap((tab) => tab.changes ?? []))];
  for (const event of events) model.on(event, refresh);
  el.classList.add("kerasllm-widget");
  el.append(root);
  refresh();
  return () => {
    for (const event of events) model.off(event, refresh);
    for (const panel of panels.values()) panel.cleanup?.();
    root.remove();
  };
}

export default {
  render({ model, el }: RenderProps<ChatModel>) {
    return renderShell(model, el, TABS);
  },
};
