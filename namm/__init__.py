"""NAMM framework: memory-managed inference on transformers and evolved attention memory models."""
