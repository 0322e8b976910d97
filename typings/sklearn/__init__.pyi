# Minimal local stubs for scikit-learn: only what trainbus's demo and tests use.
# scikit-learn ships no type information; extend these stubs (accurately) when
# more of it is needed rather than silencing the type checkers.

__version__: str
