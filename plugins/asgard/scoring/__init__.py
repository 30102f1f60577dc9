"""Scoring: the streaming scorer, and score_batch's plan, entity sources, partitions and publishing."""
