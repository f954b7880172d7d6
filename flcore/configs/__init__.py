"""Configs shipped with flcore."""
