"""flcore's built-in plugins.

They are registered through the ``flcore`` entry-point group exactly as a third-party package's are,
and use only flcore's public API, so each module here doubles as an example for plugin authors.
"""
