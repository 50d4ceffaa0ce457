"""The papers' one-layer toy models: why Muon learns rare associations (docs/theory.md).

assoc_memory: linear associative memory under class imbalance (arXiv 2509.26030), GD/SignGD/Adam/Muon.
scaling: softmax retrieval with power-law frequencies and label noise (arXiv 2602.05725), GD vs Muon.
updates: the full-batch update rules; plots: their figures; threads: one-thread context for tiny ops.
"""
