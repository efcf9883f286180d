"""Pretrained causal language models as decoders (LLaVA-style): where the model comes from
(``files.py``), the prompt it reads (``prompt.py``) and the projectors that map other inputs'
tokens into its embedding space (``projectors.py``). The head is ``heads/causal_lm.py``; the
text inputs' encoder ``encoders/lm_text.py``. Nothing here imports transformers at import
time."""
