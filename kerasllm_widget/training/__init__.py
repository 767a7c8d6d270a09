"""Training support for `Llama3CausalLM`: text datasets for Keras' trainer and compile defaults."""
