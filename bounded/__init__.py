"""Containers bounded in size, below every other layer: interceptors, runtime and services share them."""
