"""inferd's own version, in a module of its own so that every stage can stamp it (packages, cache keys, the
server's metadata) without importing `inferd`'s top level, which imports the converters."""

__version__ = "0.1.0"
