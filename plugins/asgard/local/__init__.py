"""The local profile: the services manager, the router process, the main job and the ``./asgard`` CLI.

Nothing in the platform imports this package: it drives the platform from outside, as a user would.
"""
