// One tab of the ChatWidget asking to show another with something to do there (a reply token's
// "Attribute" in the Chat tab opens the Attribution tab on that token). The asking view
// dispatches a bubbling DOM event; the shell shows the tab and hands the detail to its panel.

export const SHOW_TAB = "kw-show-tab";
export const TAB_REQUEST = "kw-tab-request";

export interface ShowTab {
  tab: string;
  detail: Record<string, unknown>;
}

/** Asks the ChatWidget's shell, from any element inside it, to show `tab` with `detail`. */
export function requestTab(from: HTMLElement, tab: string, detail: Record<string, unknown>): void {
  from.dispatchEvent(
    new CustomEvent<ShowTab>(SHOW_TAB, { bubbles: true, detail: { tab, detail } }),
  );
}

/** Calls `listener` with each detail the shell hands to `panel`; returns the cleanup. */
export function onTabRequest(
  panel: HTMLElement,
  listener: (detail: Record<string, unknown>) => void,
): () => void {
  const handler = (event: Event) => listener((event as CustomEvent).detail ?? {});
  panel.addEventListener(TAB_REQUEST, handler);
  return () => panel.removeEventListener(TAB_REQUEST, handler);
}

/** The shell's side: hands `detail` to the panel now showing the tab. */
export function deliverTabRequest(panel: HTMLElement, detail: Record<string, unknown>): void {
  panel.dispatchEvent(new CustomEvent(TAB_REQUEST, { detail }));
}
