"""PPO for LLaVA-style VLMs on vlm_envs (RL4VLM re-implemented on transformers + peft + accelerate)."""
