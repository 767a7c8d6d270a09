// The TrainingMonitor's front end (the `_esm` of kerasllm_widget.widgets.training_monitor).

import type { RenderProps } from "@anywidget/types";
import { renderMonitor } from "./monitor_view";
import type { TrainingModel } from "./protocol";
import "../chat_widget/shell.css";
import "./training.css";

export default {
  render({ model, el }: RenderProps<TrainingModel>) {
    return renderMonitor(model, el);
  },
};
