"""Blueprints, one per trigger family; thin: parse the trigger, call shared/, shape the response."""
