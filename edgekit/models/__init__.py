"""Floor 2: named models, loading, config, the decoder-layer layout (the one walker), checkpoint reading
(shards, tensor by tensor) and the Runner protocol with the PyTorch Runner. Imports only ``edgekit.core``.
"""
