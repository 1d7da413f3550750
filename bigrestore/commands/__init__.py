"""Click commands that live in their own modules; ``bigrestore.cli`` registers them."""
