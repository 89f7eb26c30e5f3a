"""Floor 2: the variant registry, a plain table: ``Variant`` values and their ``Entry`` (builder, family,
pricing, options and their defaults, load kind). It loads, exports and self-tests nothing; entries are
registered by the method and runtime rooms, found by discovery. Imports only ``edgekit.core``.
"""
