"""Data for vision-language pre-training: the embedded synthetic world (:mod:`vlkit.data.synthetic`),
masking and tokenizer facts. Import submodules directly; this package imports nothing heavy."""
