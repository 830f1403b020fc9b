"""Recording: session events -> record drafts -> the record writer (inline or in a child)."""
