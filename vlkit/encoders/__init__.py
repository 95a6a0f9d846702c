"""Encoders (registry kind ``encoder``): ``albef``, ``mome`` (VLMo) and ``dual`` (ALIGN / CLIP)."""

from vlkit.encoders import albef, dual, mome
from vlkit.encoders.base import Encoder, EncoderConfig, FusedEncoding, ImageEncoding, TextEncoding

__all__ = ["Encoder", "EncoderConfig", "FusedEncoding", "ImageEncoding", "TextEncoding", "albef", "dual", "mome"]
