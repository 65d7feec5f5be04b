"""Backends that execute or render compiled models."""
