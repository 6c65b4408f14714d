"""Decoder language models that write their answer: instruction tuning and its scoring.

:mod:`~fedpet.generative.lm` holds the model (a decoder with the method attached and its
frozen output layer), :mod:`~fedpet.generative.prompts` turns prompts and responses into
tokens, and :mod:`~fedpet.generative.scoring` measures a model on held-out responses.
"""
