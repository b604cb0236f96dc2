"""Building blocks of the decoder models: norms, rotary embeddings, MLPs, attention."""
