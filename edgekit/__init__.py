"""edgekit: what you lose and gain by quantizing a causal LM and shipping it to a device."""
__version__ = "0.1.0"
