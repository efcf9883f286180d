"""``lm_text``: a text input read by a causal LM decoder (``heads/causal_lm.py``).

The input is tokenised by the LM's own tokenizer, and the decoder reads those ids as words in
its prompt. Beside that, this encoder gives the fusion (and any other output) a small bag of
the same tokens, as ``bow`` does: ``pooled = Norm(W mean_t E[x_t] + b)``. It is the default
encoder of every text input of a model with a causal LM decoder.

Shapes: ids ``[B, L]``, mask ``[B, L]`` -> tokens ``[B, L, embedding_dim]``, pooled ``[B, dim]``.
"""

from __future__ import annotations

from pydantic import Field

from ..llm.files import DEFAULT_LM, load_hf_tokenizer, resolve_lm
from ..registry import ENCODERS
from .bow import BagOfWordsEncoder, BagOfWordsOptions
from .hf import PretrainedTokenizer


class LMTextOptions(BagOfWordsOptions):
    model: str = Field(DEFAULT_LM, description="the causal LM whose tokenizer reads the text "
                       "(the decoder's model)")
    embedding_dim: int = Field(16, ge=1)
    dim: int = Field(32, ge=1, description="width of the pooled vector")


@ENCODERS.register("lm_text", LMTextOptions)
class LMTextEncoder(BagOfWordsEncoder):
    """The LM's tokens, pooled into a small bag of words for the fusion."""

    tokenizer = "pretrained"

    @classmethod
    def load_tokenizer(cls, encoder: dict) -> PretrainedTokenizer:
        from tokenizers import Tokenizer

        loaded = load_hf_tokenizer(resolve_lm(str(encoder["model"])))
        tokenizer = Tokenizer.from_str(loaded.backend_tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return PretrainedTokenizer(tokenizer, loaded.pad_token, loaded.unk_token)
