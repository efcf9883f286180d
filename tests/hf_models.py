"""Tiny Hugging Face models built from a config and saved to a folder, for the tests of
``hf_text``, ``hf_image`` and every-encoder smoke tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

# [PAD] and [UNK] are not ids 0 and 1, so a test sees whether the tokenizer's own are used.
WORDS = ("[CLS] [SEP] [MASK] [PAD] [UNK] what colour is the shape ? red blue green square "
         "circle which in picture".split())
PAD_ID, UNK_ID = 3, 4
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def save_tiny_bert(folder: Path, vocab_size: int = len(WORDS)) -> Path:
    """A 2-layer BERT and a WordPiece tokenizer over WORDS, saved with save_pretrained (the
    model's vocabulary may be larger than the tokenizer's, for random ids)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)},
                                           unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)])
    fast = transformers.BertTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size, max_position_embeddings=64,
                                     pad_token_id=PAD_ID, **TINY)
    transformers.BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def save_tiny_vit(folder: Path) -> Path:
    """A 2-layer ViT on 32x32 images (16 patches + CLS) and its image processor."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, **TINY)
    transformers.ViTModel(config).save_pretrained(folder)
    processor_class = _processor("ViTImageProcessor")
    processor_class(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_clip_vision(folder: Path) -> Path:
    """A 2-layer CLIP vision tower and CLIP's image processor (shortest edge 32, crop 32)."""
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=16, **TINY)
    transformers.CLIPVisionModel(config).save_pretrained(folder)
    _processor("CLIPImageProcessor")(size={"shortest_edge": 32},
                                     crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _processor(name: str):
    """transformers' PIL image processor ``name`` (the torchvision one needs torchvision)."""
    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


def save_tiny_llama(folder: Path) -> Path:
    """A 2-layer llama (32 wide) with SmolLM2-135M-Instruct's tokenizer and chat template (read
    from the shipped GGUF file), saved with save_pretrained: a causal LM decoder's fast
    stand-in."""
    from mmfuse.llm.files import load_hf_tokenizer, resolve_lm

    tokenizer = load_hf_tokenizer(resolve_lm("smollm2-135m-instruct"))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
