"""Floor 5: pruning masks, structured cuts and the ``prune-*`` variants. May use ``quantizers``, never
``runtimes``.
"""
