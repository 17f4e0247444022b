"""Scripted scenarios: lessons and stakeholder demos, run in the console or headless."""
