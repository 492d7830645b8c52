"""Registers the validation commands when they exist."""
