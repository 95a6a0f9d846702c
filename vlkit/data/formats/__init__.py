"""Dataset formats beyond ALBEF-style caption lists: VQA v2, RefCOCO, the downstream task lists (VE, NLVR2,
VQA) and single-label classification folders / lists."""
