"""Test doubles for external systems the project talks to (see each module's docstring)."""
