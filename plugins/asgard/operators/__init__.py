"""Operators for infrastructure steps that hold state (build, push, pods)."""
