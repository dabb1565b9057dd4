"""The recipe: its schema, reading a YAML file into it, and prompt templates."""
