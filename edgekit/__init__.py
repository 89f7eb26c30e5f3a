"""edgekit: what you lose and gain by quantizing a causal LM and shipping it to a device."""
from edgekit.core.quiet import quiet_bitsandbytes_import

__version__ = "0.1.0"

quiet_bitsandbytes_import()  # whoever imports bitsandbytes first (edgekit or transformers), see edgekit.core.quiet
