"""Native kernels used by the generation engine."""
