// The tabs of the ChatWidget. Chat is the first; the inspectors (Tokens, Attention, Probabilities)
// register here as they are built, each acting on the same model and conversation. Training shows
// once a TrainingMonitor is attached (`chat.training_monitor()`).

import type { AnyModel } from "@anywidget/types";
import { renderAttentionTab } from "../attention/chat_tab";
import { ATTRIBUTION_TAB, renderAttributionTab } from "../attribution/chat_tab";
import { renderChat } from "../chat/chat_view";
import { hasCompare, renderCompareTab } from "../compare/chat_tab";
import { renderCacheTab } from "../kv_cache/chat_tab";
import { renderLensTab } from "../lens/chat_tab";
import { renderProbabilitiesTab } from "../probabilities/chat_tab";
import type { ChatModel } from "../shared/protocol";
import { renderSteeringTab } from "../steering/steering_view";
import { renderTokensTab } from "../tokens/chat_tab";
import { hasTraining, renderTrainingTab } from "../training/chat_tab";

export interface TabDefinition {
  id: string;
  label: string;
  /** Draws the tab into `el`; returns its cleanup. Called the first time the tab is shown. */
  render(model: AnyModel<ChatModel>, el: HTMLElement): () => void;
  /** When present, the tab is offered only while this is true; re-read on `changes` events. */
  available?: (model: AnyModel<ChatModel>) => boolean;
  changes?: string[];
}

export const TABS: TabDefinition[] = [
  { id: "chat", label: "Chat", render: renderChat },
  { id: "tokens", label: "Tokens", render: renderTokensTab },
  { id: "attention", label: "Attention", render: renderAttentionTab },
  { id: "probabilities", label: "Probabilities", render: renderProbabilitiesTab },
  { id: "lens", label: "Lens", render: renderLensTab },
  { id: ATTRIBUTION_TAB, label: "Attribution", render: renderAttributionTab },
  { id: "cache", label: "Cache", render: renderCacheTab },
  {
    id: "training",
    label: "Training",
    render: renderTrainingTab,
    available: hasTraining,
    changes: ["change:training"],
  },
  { id: "steering", label: "Steering", render: renderSteeringTab },
  {
    id: "compare",
    label: "Compare",
    render: renderCompareTab,
    available: hasCompare,
    changes: ["change:compare"],
  },
];
