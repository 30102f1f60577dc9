"""Embedded default: run the platform on one machine (services manager, main job)."""
