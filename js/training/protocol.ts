// The training monitor's traits and messages, mirrored from
// kerasllm_widget/widgets/training_monitor.py (STOP_REQUEST and the synced traitlets).

/** Front end to kernel. */
export const TRAINING_REQUEST = {
  stop: "training.stop",
} as const;

export type TrainingStatus = "idle" | "training" | "stopping" | "done" | "stopped" | "error";

/** One optimizer step. `seconds` is null for a run's first step (it includes compilation). */
export interface StepPoint {
  step: number;
  epoch: number;
  loss: number | null;
  lr: number | null;
  seconds: number | null;
}

export interface EpochSummary {
  epoch: number;
  loss: number | null;
  val_loss: number | null;
  metrics: Record<string, number | null>;
  seconds: number;
}

export interface Sample {
  epoch: number;
  prompt: string;
  text: string;
  /** The reply scored under the starting and the current weights (training_start.py). */
  compare?: StartComparison | null;
}

export interface Progress {
  epoch?: number;
  epochs?: number | null;
  step?: number;
  steps_per_epoch?: number | null;
  seconds_per_step?: number | null;
}

export interface TrainingModel {
  title: string;
  status: TrainingStatus;
  steps: StepPoint[];
  epochs: EpochSummary[];
  samples: Sample[];
  progress: Progress;
  sample_prompt_text: string;
  error: string;
}

/** A sample's reply tokens under the weights `fit` started from and the current ones. */
export interface StartComparison {
  pieces: string[];
  logprob_start: number[];
  logprob_now: number[];
  kl: number[];
  mean_kl: number;
  start: "lora" | "copy";
}
