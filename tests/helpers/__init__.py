"""Plain functions and classes the tests share (fixtures live in ``tests/conftest.py``).

Test modules import from here, never from each other."""
