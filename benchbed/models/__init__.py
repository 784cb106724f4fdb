"""Models trained by the workloads: the GPT (gpt.py), the bidirectional encoder (encoder.py), the
ViT (vit.py), and the token subset operations token dropping is made of (tokens.py)."""

from benchbed.models.encoder import Encoder, EncoderConfig
from benchbed.models.gpt import GPT, GPTConfig
from benchbed.models.vit import ViT, ViTConfig

__all__ = ["GPT", "Encoder", "EncoderConfig", "GPTConfig", "ViT", "ViTConfig"]
