"""Layer 5, the training side of a study: presets, the preflight checks before any compute, from user input to a
config and run folder (``entry``), the teacher, the students of one group, the resumable sweep and its
executors.
"""
