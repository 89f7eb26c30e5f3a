"""Floor 4: the versioned artifact folder: manifest (write, read, verify) and the artifact cache.
Imports floors 1-3.
"""
